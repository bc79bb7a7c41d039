"""The Critic's GRPO reward on hand-written completions: every case of the formula, every way to abstain."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from helpers import ScriptedAgent

from interleave_thinker.core.messages import white_canvas
from interleave_thinker.sandbox.generator import SandboxGenerator
from interleave_thinker.sandbox.grading import SandboxJudge
from interleave_thinker.training.judge import AgentJudge
from interleave_thinker.training.rewards import (
    CriticReward,
    RewardWeights,
    StepCase,
    check_format,
    improvement,
)

WHITE = white_canvas(64, 64)
STEP = "draw a large red circle at the centre"
FIX = "draw a large red circle at the centre; nothing else"  # precise: the sandbox generator draws it right
WRONG = "draw a large red circle at the top left; nothing else"
# The step asked for a red circle at the centre; the rejected picture has it at the top left (the sandbox
# judge gives it semantics 0 and quality 10).
FAILED = StepCase(STEP, WRONG, WHITE, False, 0.0, 10.0)
PASSED = StepCase(STEP, FIX, WHITE, True, 10.0, 10.0)


def answer(accepted: bool, prompt: str, think: str | None = "I compared the pictures.") -> str:
    body = json.dumps({"previous_step_success": accepted, "refine_prompt": prompt})
    return (f"<think>{think}</think>" if think is not None else "") + f"<answer>{body}</answer>"


class CountingGenerator(SandboxGenerator):
    """The sandbox generator, counting calls and the most calls running at once."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.calls = 0
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def carry_out(self, prompt, scene, seed, held=frozenset()):
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.delay)
            return super().carry_out(prompt, scene, seed, held)
        finally:
            with self._lock:
                self.running -= 1


class BrokenGenerator(SandboxGenerator):
    def carry_out(self, prompt, scene, seed, held=frozenset()):
        raise RuntimeError("the server answered 500")


def score(texts, cases, **kwargs):
    kwargs.setdefault("concurrency", 2)
    reward = CriticReward(
        kwargs.pop("generator", SandboxGenerator()), kwargs.pop("judge", SandboxJudge()), **kwargs
    )
    try:
        return reward, reward.score_sync(texts, cases)
    finally:
        reward.close()


# -- the format check ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, reason",
    [
        ("The step looks fine.", "not of the form"),
        ("<answer>{'previous_step_success': True}</answer> and more words", "not of the form"),
        ("<think>ok</think><answer>{'refine_prompt': 'a red circle'}</answer>", "no 'previous_step_success'"),
        ("<answer>{'previous_step_success': 'maybe', 'refine_prompt': ''}</answer>", "not true or false"),
        ("<answer>not a dictionary at all</answer>", "not a JSON"),
    ],
)
def test_malformed_completions_fail_the_format(text, reason):
    verdict, why = check_format(text)
    assert verdict is None
    assert reason in why


def test_the_think_block_is_optional_unless_required():
    assert check_format(answer(False, "a red circle", think=None))[0] is not None
    verdict, why = check_format(answer(False, "a red circle", think=None), require_think=True)
    assert verdict is None and "<think>" in why
    assert check_format(answer(False, "a red circle"), require_think=True)[0].refine_prompt == "a red circle"


def test_an_overlong_refined_prompt_fails_the_format():
    assert check_format(answer(False, "red " * 300), max_prompt_chars=1000)[0] is None


def test_improvement_maps_score_changes_to_zero_one():
    assert improvement(10, 0) == 1.0
    assert improvement(0, 10) == 0.0
    assert improvement(7, 7) == 0.5
    assert improvement(8, 5) == pytest.approx(0.65)


# -- the paper's formula, case by case -----------------------------------------------------------------------


def test_bad_format_scores_zero_without_calling_the_generator():
    generator = CountingGenerator()
    _, [result] = score(["The step looks fine."], [FAILED], generator=generator)
    assert result.total == 0.0 and result.format == 0.0
    assert generator.calls == 0


def test_right_and_wrong_verdicts_on_a_passed_step():
    generator = CountingGenerator()
    _, (right, wrong) = score([answer(True, FIX), answer(False, FIX)], [PASSED, PASSED], generator=generator)
    # 0.5*F + 0.5*(0.2*A + 0.6*0.5 + 0.2*0.5): a passed step needs no new picture, both step parts neutral.
    assert right.total == pytest.approx(0.8)
    assert wrong.total == pytest.approx(0.7)
    assert generator.calls == 0


def test_a_refined_prompt_that_fixes_the_step_earns_the_improvement():
    _, [fixed, repeated] = score([answer(False, FIX), answer(False, WRONG)], [FAILED, FAILED])
    # The fix draws the circle at the centre: semantics 10 against the rejected picture's 0, same quality.
    assert (fixed.judge_semantics, fixed.judge_quality) == (10.0, 10.0)
    assert fixed.semantics == 1.0 and fixed.quality == 0.5
    assert fixed.total == pytest.approx(0.5 + 0.5 * (0.2 + 0.6 * 1.0 + 0.2 * 0.5))
    # Repeating the failed prompt draws the same wrong place: no improvement.
    assert repeated.total == pytest.approx(0.5 + 0.5 * (0.2 + 0.6 * 0.5 + 0.2 * 0.5))
    assert fixed.total > repeated.total


def test_a_wrong_verdict_on_a_failed_step_still_tests_its_prompt():
    _, [result] = score([answer(True, WRONG)], [FAILED])
    assert result.accuracy == 0.0 and result.tested_prompt == WRONG
    assert result.total == pytest.approx(0.5 + 0.5 * (0.0 + 0.6 * 0.5 + 0.2 * 0.5))


def test_an_empty_refined_prompt_retries_the_prompt_used():
    _, [result] = score([answer(False, "")], [FAILED])
    assert result.tested_prompt == WRONG


def test_a_fix_that_costs_picture_quality_loses_the_quality_part():
    class Harsh(SandboxJudge):
        def quality(self, image):
            return 4.0

    # Against the rejected picture (the paper's baseline): from its quality 10 down to 4.
    _, [result] = score([answer(False, FIX)], [FAILED], judge=Harsh(), baseline="rejected")
    assert result.judge_semantics == 10.0 and result.judge_quality == 4.0
    assert result.quality == pytest.approx(0.2)
    assert result.total == pytest.approx(0.5 + 0.5 * (0.2 + 0.6 * 1.0 + 0.2 * 0.2))


def test_weights_are_configurable():
    weights = RewardWeights(format=1.0, accuracy=0.0, semantics=0.0, quality=0.0)
    _, results = score(
        [answer(True, "x"), answer(False, WRONG), "nonsense"],
        [PASSED, FAILED, FAILED],
        weights=weights,
    )
    assert [r.total for r in results] == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="unknown reward weight"):
        RewardWeights.from_dict({"style": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        RewardWeights.from_dict({"format": -1})


# -- abstaining: no score rather than a made-up one ----------------------------------------------------------


def test_a_failing_generator_abstains_for_its_completions_only():
    reward, (failed, passed) = score(
        [answer(False, FIX), answer(True, FIX)],
        [FAILED, PASSED],
        generator=BrokenGenerator(),
    )
    assert failed.total is None and "generator failed" in failed.abstained
    assert passed.total == pytest.approx(0.8)
    assert reward.stats["generator_failures"] == 2 * reward.samples  # the fix and the re-sent failed prompt


def test_a_judge_answer_that_does_not_parse_abstains():
    judge = AgentJudge(ScriptedAgent(["The picture is quite good, maybe 7 out of 10."], name="chatty"))
    _, [result] = score([answer(False, FIX)], [FAILED], judge=judge)
    assert result.total is None
    assert "judge failed" in result.abstained and "not one JSON object" in result.abstained


def test_a_judge_score_out_of_range_abstains():
    class Generous(SandboxJudge):
        def semantics(self, before, after, instruction):
            return 11.0

    _, [result] = score([answer(False, FIX)], [FAILED], judge=Generous())
    assert result.total is None and "not a number from 0 to 10" in result.abstained


def test_a_generator_that_times_out_abstains():
    reward, [result] = score(
        [answer(False, FIX)],
        [FAILED],
        generator=CountingGenerator(delay=1.0),
        timeout=0.1,
        samples=1,
        baseline="rejected",
    )
    assert result.total is None and "within 0.1 s" in result.abstained
    assert reward.stats["generator_timeouts"] == 1


def test_draws_waiting_for_a_worker_do_not_time_out():
    # Eight draws of 0.2 s one at a time take 1.6 s: each is within its 0.5 s, however long it waited.
    generator = CountingGenerator(delay=0.2)
    texts = [answer(False, FIX.replace("red", c)) for c in ["red", "green", "blue"]]
    reward, results = score(texts, [FAILED] * 3, generator=generator, concurrency=1, timeout=0.5, samples=2)
    assert generator.calls == 8 and all(r.total is not None for r in results)  # 3 prompts + the failed one
    assert reward.stats["generator_timeouts"] == 0


def test_a_missing_before_image_abstains(tmp_path):
    case = StepCase(STEP, WRONG, str(tmp_path / "gone.png"), False, 0.0, 10.0)
    _, [result] = score([answer(False, FIX)], [case])
    assert result.total is None and "before image" in result.abstained


# -- caching and concurrency ---------------------------------------------------------------------------------


def test_repeated_prompts_generate_once_and_the_cache_survives_a_restart(tmp_path):
    generator = CountingGenerator()
    texts = [answer(False, FIX)] * 4 + [answer(False, FIX.replace("red", "green"))] * 4
    reward, results = score(texts, [FAILED] * 8, generator=generator, cache_dir=tmp_path)
    assert generator.calls == 3 * reward.samples  # two prompts and the failed one as the baseline, per seed
    assert len({r.total for r in results[:4]}) == 1
    again = CountingGenerator()
    _, second = score(texts, [FAILED] * 8, generator=again, cache_dir=tmp_path)
    assert again.calls == 0
    assert [r.total for r in second] == [r.total for r in results]
    assert list((tmp_path / "images").glob("*.png")) and list((tmp_path / "scores").glob("*.json"))


def test_calls_run_in_parallel_within_the_bound():
    generator = CountingGenerator(delay=0.2)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    texts = [answer(False, FIX.replace("red", c)) for c in colours]
    _, results = score(
        texts, [FAILED] * 6, generator=generator, concurrency=2, samples=1, baseline="rejected"
    )
    assert generator.calls == 6 and generator.most == 2  # two at a time: never one by one, never more
    assert all(r.total is not None for r in results)


def test_the_trl_entry_point_reads_the_dataset_columns_and_logs():
    reward = CriticReward(SandboxGenerator(), SandboxJudge())
    logged: dict[str, float] = {}
    extra: dict[str, list] = {}
    completions = [
        [{"role": "assistant", "content": answer(False, FIX)}],
        [{"role": "assistant", "content": "no idea"}],
    ]
    try:
        totals = asyncio.run(
            reward(
                prompts=[[], []],
                completions=completions,
                origin_prompt=[STEP] * 2,
                rewritten_prompt=[WRONG] * 2,
                before_image=[WHITE, WHITE],
                label_success=[False, False],
                label_semantics=[0.0, 0.0],
                label_quality=[10.0, 10.0],
                log_metric=logged.__setitem__,
                log_extra=extra.__setitem__,
                trainer_state=None,
            )
        )
    finally:
        reward.close()
    assert totals == [pytest.approx(0.95), 0.0]
    assert logged["critic/format"] == 0.5 and logged["critic/abstained"] == 0.0
    assert extra["tested_prompt"] == [FIX, ""]
    assert reward.__name__ == "critic_reward"  # the name TRL logs the reward under


def test_only_the_latest_pictures_stay_in_memory(tmp_path):
    reward = CriticReward(SandboxGenerator(), SandboxJudge(), cache_dir=tmp_path)
    reward.cache.images_in_memory = 2
    colours = ["red", "green", "blue", "yellow"]
    try:
        reward.score_sync([answer(False, FIX.replace("red", c)) for c in colours], [FAILED] * 4)
    finally:
        reward.close()
    in_memory = [v for v in reward.cache.memory.values() if not isinstance(v, float)]
    assert len(in_memory) == 2
    # The disk keeps them all: four prompts and the failed one, each drawn with every seed.
    assert len(list((tmp_path / "images").glob("*.png"))) == 5 * reward.samples


# -- the step part measures the fix, not the luck ------------------------------------------------------------

# An edit whose prompt places the new object by a relation: the sandbox generator puts it in the wrong cell
# half the time. The rejected picture had the circle in the wrong cell (semantics 0, quality 10).
SQUARE = "draw a large blue square at the centre; nothing else"
RELATION = "add a small red circle right of the blue square"
REWORDED = "add a small red circle right of the blue square; keep everything else unchanged"  # still vague
PRECISE = "add a small red circle at the right; keep everything else unchanged"
# From seed 3 the relation prompt draws right, right, wrong, wrong cell, wrong cell... : one lucky redraw.
LUCKY_SEED = 3


def vague_edit_case() -> StepCase:
    before = SandboxGenerator().text_to_image(SQUARE, width=64, height=64, seed=0)
    return StepCase(RELATION, RELATION, before, False, 0.0, 10.0)


def test_a_precise_refinement_earns_more_than_resending_the_failed_prompt():
    case = vague_edit_case()
    texts = [answer(False, RELATION), answer(False, REWORDED), answer(False, PRECISE)]
    # One fixed seed (the paper's reward), a lucky one: re-sending the failed prompt earns as much as the fix.
    _, (resent, _, precise) = score(texts, [case] * 3, seed=LUCKY_SEED, samples=1, baseline="rejected")
    assert resent.judge_semantics == precise.judge_semantics == 10.0
    assert resent.total == precise.total
    # The default draws each prompt with several seeds and compares it with the failed prompt re-sent under
    # the same seeds: re-sending earns exactly "no change", a still vague rewording no more, the fix more.
    reward, (resent, reworded, precise) = score(texts, [case] * 3, seed=LUCKY_SEED)
    assert reward.samples > 1 and reward.baseline == "resend"
    assert resent.semantics == resent.quality == 0.5
    assert (
        resent.baseline_semantics == resent.judge_semantics < 10.0
    )  # the failed prompt's mean over the seeds
    assert precise.judge_semantics == 10.0 and precise.semantics > 0.6
    assert precise.total - resent.total > 0.03 and precise.total - reworded.total > 0.03
    assert reworded.total <= resent.total + 1e-9


def test_every_seed_draws_each_prompt_once_and_a_failed_draw_abstains():
    class FailsOnOneSeed(CountingGenerator):
        def edit(self, before, prompt, *, seed, references=()):
            if prompt == PRECISE and seed == 2:
                raise RuntimeError("out of memory")
            return super().edit(before, prompt, seed=seed, references=references)

    case = vague_edit_case()
    generator = CountingGenerator()
    reward, results = score(
        [answer(False, PRECISE)] * 3 + [answer(False, RELATION)], [case] * 4, generator=generator
    )
    assert generator.calls == 2 * reward.samples  # the fix and the failed prompt, once per seed each
    assert all(r.total is not None for r in results)
    reward, (fix, resend) = score(
        [answer(False, PRECISE), answer(False, RELATION)], [case] * 2, generator=FailsOnOneSeed()
    )
    assert fix.total is None and "out of memory" in fix.abstained  # no mean over the draws that worked
    assert resend.total is not None


def test_the_draw_settings_are_checked():
    with pytest.raises(ValueError, match="samples must be"):
        CriticReward(SandboxGenerator(), SandboxJudge(), samples=0)
    with pytest.raises(ValueError, match="baseline must be one of resend, rejected"):
        CriticReward(SandboxGenerator(), SandboxJudge(), baseline="luck")
