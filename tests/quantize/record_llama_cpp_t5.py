"""Record what llama.cpp's own converter makes of the tiny T5 / UMT5 folders (textenc_kit.py):
tests/data/llama_cpp_t5encoder.json, which test_gguf_text_encoders.py holds our F16 GGUF to.

llama.cpp's converter ships in llama-cpp-python's source distribution (nothing of it is kept here):

    pip download llama-cpp-python --no-binary :all: --no-deps -d /tmp/lcp
    tar xzf /tmp/lcp/llama_cpp_python-*.tar.gz -C /tmp/lcp
    PYTHONPATH=. python tests/quantize/record_llama_cpp_t5.py /tmp/lcp/llama_cpp_python-*/vendor/llama.cpp

Known UMT5 GGUFs were made by declaring the folder a T5EncoderModel, which llama.cpp converts; so
is the UMT5 folder here. The converter runs with its own vendored gguf-py, as it does for users.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from textenc_kit import gguf_summary, t5_folder

OUT = Path(__file__).resolve().parents[1] / "data" / "llama_cpp_t5encoder.json"


def run_converter(llama_cpp: Path, folder: Path, out: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py on ``folder`` (declared a T5EncoderModel), F16."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["T5EncoderModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    subprocess.run(
        [
            sys.executable,
            str(llama_cpp / "convert_hf_to_gguf.py"),
            str(folder),
            "--outtype",
            "f16",
            "--outfile",
            str(out),
        ],
        check=True,
        capture_output=True,
    )


def main(llama_cpp: Path) -> None:
    record = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("wan", "cogvideox"):
            folder = t5_folder(Path(tmp) / family, family)
            run_converter(llama_cpp, folder, Path(tmp) / f"{family}.gguf")
            record[family] = gguf_summary(Path(tmp) / f"{family}.gguf")
    OUT.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(OUT)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
