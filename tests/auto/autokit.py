"""Settings shared by the auto: tests (a module of its own: every test folder has a conftest)."""

# Generation settings of every auto: test: the tiny size, 2 steps, short seeded prompts.
GEN = [
    "--steps",
    "2",
    "--height",
    "32",
    "--width",
    "32",
    "--frames",
    "5",
    "--text-len",
    "8",
    "--device",
    "cpu",
]
# Every GGUF tensor but four of block 0 kept, so the search has few layers to cost.
KEEP_GGUF = ["--keep", "blocks.*.cross_attn.*", "--keep", "blocks.1.*", "--keep", "blocks.0.self_attn.[qk].*"]
