// Shows the story text that Save Storyboard returns, under its step pictures.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES_WITH_TEXT = new Set(["InterleaveThinkerSaveStoryboard"]);
const WIDGET = "story_text";

app.registerExtension({
  name: "InterleaveThinker.StoryText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES_WITH_TEXT.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n\n");
      let widget = this.widgets?.find((w) => w.name === WIDGET);
      if (!widget) {
        widget = ComfyWidgets.STRING(this, WIDGET, ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.inputEl.style.opacity = 0.85;
        // Output only: it must not shift the node's saved widget values.
        widget.serialize = false;
        if (widget.options) widget.options.serialize = false;
      }
      widget.value = text;
      this.setDirtyCanvas?.(true, true);
    };
  },
});
