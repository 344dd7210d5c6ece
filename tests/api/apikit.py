"""Generation settings shared by the API tests (a module of its own: `from conftest import` would find
whichever folder's conftest pytest imported first)."""

GEN = {"steps": 1, "height": 32, "width": 32, "frames": 5, "text_len": 8}
GEN_ARGS = ["--steps", "1", "--height", "32", "--width", "32", "--frames", "5", "--text-len", "8"]
