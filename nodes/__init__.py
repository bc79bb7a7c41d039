"""ComfyUI nodes: thin adapters over the engine in ``core``."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
