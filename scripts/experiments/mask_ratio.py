"""Mask-ratio trade-off: gradient-estimator variance vs alpha, and loss/accuracy at equal compute.

    python scripts/experiments/mask_ratio.py [--config run.yaml] [--out docs/experiments] [--tiny]

(a) Variance. At a fixed checkpoint (the shared pretrained model, and the same architecture at
    random init for contrast) and a fixed batch of blocks, draw K independent maskings at each
    ratio alpha and compute the gradient of the mean masked loss for each. The variance of the
    estimator is the trace of the covariance of the K gradients (Welford, unbiased). The claim is
    variance ~ 1/alpha; the script fits log(variance) = c + b log(alpha) and reports b.
(b) Equal compute. Pretrain from scratch at each alpha with the library's `train(cfg)` for the
    same training FLOPs (model.flops_per_token counts the sparse head, which grows with alpha,
    so a higher alpha gets slightly fewer steps), then evaluate every model at every alpha on the
    validation split with a fixed masking seed, and fine-tune each on a small topic-classification
    task built from stdlib docstrings (scripts/make_classification_task.py + mlm.finetune).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mlm.checkpoint import load_pretrained  # noqa: E402
from mlm.collate import MLMCollator  # noqa: E402
from mlm.loop import evaluate  # noqa: E402

NAME = "mask_ratio"
ALPHAS = (0.05, 0.10, 0.15, 0.30, 0.50)


def parse(argv):
    p = common.make_parser(NAME, __doc__)
    p.add_argument("--alphas", type=lambda s: [float(x) for x in s.split(",")], default=list(ALPHAS))
    p.add_argument("--maskings", type=int, default=None, help="independent maskings per alpha (default 16; tiny 4)")
    p.add_argument("--variance-blocks", type=int, default=None, help="blocks in the fixed batch (default 32; tiny 8)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps at alpha=0.15 for the equal-compute runs (default 150; tiny 4)")
    p.add_argument("--no-finetune", action="store_true", help="skip the downstream fine-tuning part")
    p.add_argument("--ft-epochs", type=int, default=4)
    return p.parse_args(argv)


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).double()


def gradient_variance(model, tokenizer, blocks: np.ndarray, alphas, maskings: int, seed: int, device) -> list[dict]:
    """Per alpha: trace of the covariance of the minibatch gradient over independent maskings."""
    rows = []
    model.train()  # no dropout in these configs; train() only for parity with training
    for ai, alpha in enumerate(alphas):
        collator = MLMCollator.from_tokenizer(tokenizer, mlm_probability=alpha)
        mean, m2, sq_norm, masked = None, 0.0, 0.0, []
        for k in range(maskings):
            batch = collator(list(blocks), generator=np.random.default_rng([seed, ai, k]))
            model.zero_grad(set_to_none=True)
            out = model(batch["input_ids"].to(device), labels=batch["labels"].to(device), reduction="mean")
            out.loss.backward()
            g = flat_grad(model)
            masked.append(int((batch["labels"] != -100).sum()))
            sq_norm += float(g @ g)
            if mean is None:
                mean = g.clone()
                continue
            delta = g - mean
            mean += delta / (k + 1)
            m2 += float(delta @ (g - mean))
        model.zero_grad(set_to_none=True)
        var = m2 / (maskings - 1)
        rows.append({"alpha": alpha, "variance": var, "mean_grad_sq_norm": float(mean @ mean),
                     "mean_sq_grad_norm": sq_norm / maskings, "relative_variance": var / float(mean @ mean),
                     "masked_tokens_mean": float(np.mean(masked)), "variance_x_alpha": var * alpha})
        common.log(f"  alpha={alpha:.2f}: variance {var:.4g} (|mean grad|^2 {float(mean @ mean):.4g}, "
                   f"{np.mean(masked):.0f} masked tokens)")
    return rows


def fit_power_law(xs, ys) -> dict:
    """log y = c + b log x by least squares; b with its standard error and R^2."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    A = np.stack([np.ones_like(lx), lx], 1)
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    resid = ly - A @ coef
    n = len(lx)
    dof = max(1, n - 2)
    s2 = float(resid @ resid) / dof
    se_b = float(np.sqrt(s2 / np.sum((lx - lx.mean()) ** 2)))
    r2 = 1.0 - float(resid @ resid) / float(np.sum((ly - ly.mean()) ** 2))
    return {"exponent": float(coef[1]), "exponent_stderr": se_b, "log_constant": float(coef[0]), "r2": r2}


def make_task(work: Path, tiny: bool) -> Path:
    task = work / ("task-tiny" if tiny else "task")
    if not (task / "test.jsonl").is_file():
        counts = ["4", "3", "4"] if tiny else ["60", "20", "60"]
        subprocess.run([sys.executable, str(common.REPO / "scripts" / "make_classification_task.py"),
                        "--out", str(task), "--train-per-label", counts[0], "--dev-per-label", counts[1],
                        "--test-per-label", counts[2], "--seed", "0"], check=True, stdout=subprocess.DEVNULL)
    return task


def finetune_one(init: str, task: Path, out: Path, epochs: int, seed: int, threads: int, extra=()) -> dict:
    from mlm.config import load_config
    from mlm.finetune import FinetuneConfig, finetune
    overrides = [f"init_from={init}", f"data.train_file={task / 'train.jsonl'}",
                 f"data.validation_file={task / 'dev.jsonl'}", f"data.test_file={task / 'test.jsonl'}",
                 f"output_dir={out}", f"train.epochs={epochs}", "train.lr=5e-4", "train.patience=0",
                 f"train.seed={seed}", "train.precision=fp32", "save_checkpoint=false", *extra]
    if threads:
        overrides.append(f"train.num_threads={threads}")
    cfg = load_config(common.REPO / "configs" / "finetune.yaml", overrides, cls=FinetuneConfig)
    r = finetune(cfg)
    return {k: r.get(k) for k in ("validation_accuracy", "test_accuracy", "test_macro_f1",
                                  "majority_baseline_test_accuracy", "num_train", "num_test", "seconds")}


def main(argv=None) -> int:
    args = parse(argv)
    if args.replot:
        return common.replot(args.out, NAME + args.suffix, draw)
    t_start = time.monotonic()
    K = args.maskings or (4 if args.tiny else 16)
    B = args.variance_blocks or (8 if args.tiny else 32)
    base_steps = args.steps or (4 if args.tiny else 150)
    cfg, rt = common.start(args)
    data = common.load_data(cfg)
    work = Path(args.work_dir)
    timings: dict[str, float] = {}

    # ---- (a) gradient variance at a fixed checkpoint
    ckpt = common.shared_checkpoint(cfg, work, timings)
    model, tok = load_pretrained(ckpt, rt.device)
    blocks = common.fixed_blocks(data.train, B, args.seed)
    t0 = time.monotonic()
    variance = {}
    common.log(f"(a) gradient variance at the pretrained checkpoint, {K} maskings x {B} blocks per alpha")
    variance["pretrained"] = gradient_variance(model, tok, blocks, args.alphas, K, args.seed, rt.device)
    common.log("(a) same at random init")
    torch.manual_seed(args.seed)
    model.reset_parameters()
    variance["random_init"] = gradient_variance(model, tok, blocks, args.alphas, K, args.seed, rt.device)
    fits = {name: fit_power_law([r["alpha"] for r in rows], [r["variance"] for r in rows])
            for name, rows in variance.items()}
    timings["variance"] = time.monotonic() - t0
    del model

    # ---- (b) equal-compute pretraining at each alpha
    t0 = time.monotonic()
    probe_model, _ = load_pretrained(ckpt)
    fpt = {a: probe_model.flops_per_token(cfg.data.seq_len, a) for a in args.alphas}
    budget = base_steps * probe_model.flops_per_token(cfg.data.seq_len, 0.15)
    del probe_model
    runs = []
    for alpha in args.alphas:
        steps = max(1, int(round(budget / fpt[alpha])))
        run_cfg = common.clone_config(cfg, **{
            "collate.mlm_probability": alpha, "train.max_steps": steps,
            "train.warmup_steps": min(cfg.train.warmup_steps, max(1, steps // 10)),
            "eval.every": 0, "checkpoint.every": 0})
        common.log(f"(b) alpha={alpha:.2f}: {steps} steps from scratch")
        run_dir = work / f"{NAME}-a{alpha:g}-{common.config_hash(run_cfg)}"
        reused = (run_dir / "pretrain_seconds.txt").is_file()
        run_ckpt = common.pretrained_checkpoint(run_cfg, work, tag=f"{NAME}-a{alpha:g}")
        trained_s = float((run_dir / "pretrain_seconds.txt").read_text()) if (run_dir / "pretrain_seconds.txt").is_file() else None
        m, _ = load_pretrained(run_ckpt, rt.device)
        evals = {}
        for eval_alpha in args.alphas:
            col = MLMCollator.from_tokenizer(tok, mlm_probability=eval_alpha)
            e = evaluate(m, data.validation, col, rt, cfg.eval.batch_size, cfg.eval.batches, cfg.eval.seed)
            evals[f"{eval_alpha:g}"] = {"loss": e["eval_loss"], "accuracy": e["eval_accuracy"]}
        final = common.pretrain_metrics(run_ckpt)
        runs.append({"alpha": alpha, "steps": steps, "reused_cached_run": reused, "pretraining_seconds": trained_s,
                     "train_flops": steps * cfg.train.batch_size *
                     cfg.data.seq_len * fpt[alpha], "checkpoint": str(run_ckpt),
                     "final_train_loss": final.get("train_loss"), "eval_own_alpha": evals[f"{alpha:g}"],
                     "eval_at_0.15": evals["0.15"] if "0.15" in evals else None, "eval_matrix": evals})
        common.log(f"    val loss at own alpha {evals[f'{alpha:g}']['loss']:.4f}"
                   + (f", at 0.15: {evals['0.15']['loss']:.4f}" if "0.15" in evals else ""))
        del m
    timings["equal_compute_pretraining"] = time.monotonic() - t0

    # ---- (b) downstream: fine-tune every alpha's model (and a scratch baseline)
    downstream: dict = {"done": False}
    if not args.no_finetune:
        t0 = time.monotonic()
        try:
            task = make_task(work, args.tiny)
            results = []
            for r in runs:
                common.log(f"(b) fine-tuning alpha={r['alpha']:.2f}")
                res = finetune_one(r["checkpoint"], task, work / f"{NAME}-ft" / f"a{r['alpha']:g}",
                                   1 if args.tiny else args.ft_epochs, args.seed, args.threads)
                results.append({"alpha": r["alpha"], **res})
                common.log(f"    test accuracy {res['test_accuracy']:.4f}")
            shared = finetune_one(str(ckpt), task, work / f"{NAME}-ft" / "shared", 1 if args.tiny else args.ft_epochs,
                                  args.seed, args.threads)
            common.log(f"    shared {cfg.train.max_steps}-step checkpoint: test accuracy {shared['test_accuracy']:.4f}")
            scratch = finetune_one("scratch", task, work / f"{NAME}-ft" / "scratch", 1 if args.tiny else args.ft_epochs,
                                   args.seed, args.threads, extra=[f"architecture_from={runs[0]['checkpoint']}"])
            downstream = {"done": True, "task": "stdlib docstring topic (7 labels)", "epochs": args.ft_epochs,
                          "per_alpha": results, "scratch_baseline": scratch,
                          "shared_checkpoint": {"pretraining_steps": cfg.train.max_steps, "alpha": 0.15, **shared}}
        except Exception as err:  # the fine-tuning command belongs to another module; report, don't die
            downstream = {"done": False, "error": f"{type(err).__name__}: {err}"}
            common.log(f"fine-tuning not done: {downstream['error']}")
        timings["finetune"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - t_start

    result = {
        "experiment": NAME, "command": common.command_line(NAME, argv), "tiny": args.tiny, "seed": args.seed,
        "config": common.describe_config(cfg), "environment": common.environment(rt),
        "claim": "variance of the gradient estimator across maskings scales as 1/alpha (exponent -1)",
        "variance": {"maskings": K, "blocks": B, "checkpoint": str(ckpt),
                     "pretrain_final_metrics": common.pretrain_metrics(ckpt), "per_alpha": variance, "fit": fits},
        "equal_compute": {"base_steps_at_0.15": base_steps, "runs": runs},
        "downstream": downstream, "seconds": timings,
    }
    common.write_json(args.out, NAME + args.suffix, result)
    common.write_plot(args.out, NAME + args.suffix, lambda plt: draw(plt, result))
    return 0


def _alpha_ticks(ax, alphas):
    from matplotlib.ticker import NullLocator
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
    ax.xaxis.set_minor_locator(NullLocator())


def draw(plt, r):
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, rows in r["variance"]["per_alpha"].items():
        a = [x["alpha"] for x in rows]
        v = [x["variance"] for x in rows]
        f = r["variance"]["fit"][name]
        ax[0].loglog(a, v, "o-", label=f"{name}: exponent {f['exponent']:.2f} ± {f['exponent_stderr']:.2f}")
        ref = np.exp(np.log(v[0])) * (np.asarray(a) / a[0]) ** -1.0
        ax[0].loglog(a, ref, ":", color="gray")
    ax[0].set(title="(a) gradient variance over maskings\n(dotted: slope -1, the claim)", xlabel="mask ratio α",
              ylabel="trace Cov[∇L]")
    ax[0].legend(fontsize=8)
    runs = r["equal_compute"]["runs"]
    alphas = [x["alpha"] for x in runs]
    ax[1].plot(alphas, [x["eval_own_alpha"]["loss"] for x in runs], "o-", label="eval at its own α")
    if all(x["eval_at_0.15"] for x in runs):
        ax[1].plot(alphas, [x["eval_at_0.15"]["loss"] for x in runs], "s-", label="eval at α=0.15")
    ax[1].set(title="(b) validation masked loss, equal training FLOPs", xlabel="training mask ratio α",
              ylabel="masked cross-entropy", xscale="log")
    ax[1].legend(fontsize=8)
    _alpha_ticks(ax[0], alphas)
    _alpha_ticks(ax[1], alphas)
    d = r["downstream"]
    if d.get("done"):
        ax[2].plot([x["alpha"] for x in d["per_alpha"]], [x["test_accuracy"] for x in d["per_alpha"]], "o-",
                   label="fine-tuned from α model")
        ax[2].axhline(d["scratch_baseline"]["test_accuracy"], color="gray", ls="--", label="random-init baseline")
        if "shared_checkpoint" in d:
            ax[2].axhline(d["shared_checkpoint"]["test_accuracy"], color="C2", ls="-.",
                          label=f"shared checkpoint ({d['shared_checkpoint']['pretraining_steps']} steps, α=0.15)")
        ax[2].axhline(d["per_alpha"][0]["majority_baseline_test_accuracy"], color="k", ls=":", label="majority class")
        ax[2].set(title="(b) downstream test accuracy (topic task)", xlabel="training mask ratio α", xscale="log",
                  ylabel="accuracy")
        ax[2].legend(fontsize=8)
        _alpha_ticks(ax[2], alphas)
    else:
        ax[2].text(0.5, 0.5, "fine-tuning not run", ha="center", va="center")
        ax[2].set_axis_off()
    return fig


if __name__ == "__main__":
    sys.exit(main())
