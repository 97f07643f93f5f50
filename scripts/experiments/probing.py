"""Linear probing of a frozen encoder for a token-level property, with and without the verb.

    python scripts/experiments/probing.py [--config run.yaml] [--out docs/experiments] [--tiny]

Property: the semantic role of a noun, agent (does the action) vs patient (undergoes it), in
sentences built from templates in the corpus's own vocabulary (Python docstrings):

    active          [prefix] the A <verb>s the B .
    passive         [prefix] the B is <verb>ed by the A .
    subject rel.    [prefix] the A that <verb>s the B is <adj> .
    object rel.     [prefix] the B that the A <verb>s is <adj> .

A is the agent, B the patient. Word position alone does not give the role (position 1 holds an
agent in two templates and a patient in the other two), so the probe has to read the sentence's
structure. Nouns are split into disjoint train/test sets, so the probe cannot memorise which
noun tends to be which role. Only words that are a single token for the checkpoint's tokenizer
are used. Features: the noun token's hidden state after the embeddings (layer 0, includes the
position embedding) and after each encoder layer; the probe is L2-regularised logistic
regression (`mlm.probe.fit_logistic_regression`), its penalty chosen per layer from
`mlm.probe.L2_GRID` on a dev set of sentences built from a third, disjoint set of nouns (nouns
split 50/20/30 into train/dev/test); the encoder is frozen. Then the same
sentences are probed with the verb replaced by [MASK]. Control: the same architecture with
random weights.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mlm.checkpoint import load_pretrained  # noqa: E402
from mlm.probe import L2_GRID, fit_logistic_regression  # noqa: E402
from mlm.tokenizer import CLS, MASK, SEP  # noqa: E402

NAME = "probing"

NOUNS = """function method class module object value string list file argument parser server client thread
socket buffer dictionary key path name error result instance attribute iterator generator callback handler
request response process loop task widget window message header stream event queue lock timer node element
tree table record user caller reader writer connection session context frame protocol transport encoder decoder
archive directory entry item sequence mapping array number integer date pattern token line character byte field
descriptor interpreter compiler tokenizer formatter logger filter test case runner loader finder package source
target data text document command option parameter variable child parent subprocess worker manager
builder wrapper proxy channel cursor database view menu button label canvas image""".split()
VERBS = [("returns", "returned"), ("calls", "called"), ("creates", "created"), ("reads", "read"),
         ("writes", "written"), ("opens", "opened"), ("closes", "closed"), ("raises", "raised"),
         ("contains", "contained"), ("accepts", "accepted"), ("updates", "updated"), ("sends", "sent"),
         ("receives", "received"), ("uses", "used"), ("wraps", "wrapped"), ("checks", "checked"),
         ("handles", "handled"), ("parses", "parsed"), ("stores", "stored"), ("holds", "held"),
         ("starts", "started"), ("stops", "stopped"), ("finds", "found"), ("copies", "copied"),
         ("replaces", "replaced"), ("removes", "removed"), ("adds", "added"), ("loads", "loaded"),
         ("registers", "registered"), ("processes", "processed"), ("modifies", "modified"),
         ("creates", "created"), ("changes", "changed"), ("deletes", "deleted"), ("ignores", "ignored")]
ADJS = ["valid", "empty", "ready", "closed", "new", "open", "available", "invalid", "true", "false"]
PREFIXES = ["", "then", "here", "usually", "first", "if needed ,", "in this case ,", "otherwise"]
TEMPLATES = {
    "active": "{pre} the {A} {V} the {B} .",
    "passive": "{pre} the {B} is {P} by the {A} .",
    "subject_relative": "{pre} the {A} that {V} the {B} is {J} .",
    "object_relative": "{pre} the {B} that the {A} {V} is {J} .",
}


def parse(argv):
    p = common.make_parser(NAME, __doc__)
    p.add_argument("--train-sentences", type=int, default=None, help="default 800; tiny 40")
    p.add_argument("--test-sentences", type=int, default=None, help="default 400; tiny 20")
    p.add_argument("--dev-sentences", type=int, default=None, help="default 300; tiny 12")
    p.add_argument("--l2", type=float, default=None, help="fixed L2 penalty (default: chosen on dev per layer)")
    return p.parse_args(argv)


def single_token(tok, words):
    out = []
    for w in dict.fromkeys(words):
        ids = tok.encode(w, add_special_tokens=False).ids
        if len(ids) == 1 and tok.id_to_token(ids[0]) == w:
            out.append(w)
    return out


def make_sentences(tok, n: int, nouns, verbs, rng: np.random.Generator) -> list[dict]:
    """Sentences as token ids with the positions of the agent, patient and verb tokens."""
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    items = []
    names = list(TEMPLATES)
    for i in range(n):
        kind = names[i % len(names)]
        a, b = rng.choice(len(nouns), 2, replace=False)
        v, pp = verbs[rng.integers(len(verbs))]
        words = TEMPLATES[kind].format(pre=PREFIXES[rng.integers(len(PREFIXES))], A=f"<A>{nouns[a]}",
                                       B=f"<B>{nouns[b]}", V=f"<V>{v}", P=f"<V>{pp}",
                                       J=ADJS[rng.integers(len(ADJS))]).split()
        ids, pos = [cls_id], {}
        for w in words:
            for tag in ("<A>", "<B>", "<V>"):
                if w.startswith(tag):
                    w = w[len(tag):]
                    pos[tag[1]] = len(ids)
            piece = tok.encode(w, add_special_tokens=False).ids
            ids.extend(piece)
        ids.append(sep_id)
        items.append({"ids": ids, "agent": pos["A"], "patient": pos["B"], "verb": pos["V"], "template": kind})
    return items


@torch.no_grad()
def layer_features(model, items, mask_verb: bool, mask_id: int, device) -> tuple[np.ndarray, np.ndarray, list]:
    """(layers + 1, 2 * n, h) features of agent and patient tokens, labels (1 = agent), templates."""
    model.eval()
    captured: list[torch.Tensor] = []
    hooks = [model.embeddings.register_forward_hook(lambda m, i, o: captured.append(o))]
    hooks += [blk.register_forward_hook(lambda m, i, o: captured.append(o)) for blk in model.layers]
    feats, labels, kinds = [], [], []
    try:
        by_len: dict[int, list[int]] = {}
        for k, it in enumerate(items):
            by_len.setdefault(len(it["ids"]), []).append(k)
        for length, ks in sorted(by_len.items()):
            ids = torch.tensor([items[k]["ids"] for k in ks], device=device)
            if mask_verb:
                ids[torch.arange(len(ks)), torch.tensor([items[k]["verb"] for k in ks])] = mask_id
            captured.clear()
            final = model.encode(ids)  # (b, s, h); no padding within a length group
            states = captured[:len(model.layers)] + [final]  # embeddings, blocks 1..L-1, final (normed)
            rows = torch.arange(len(ks))
            for role, label in (("agent", 1), ("patient", 0)):
                at = torch.tensor([items[k][role] for k in ks])
                feats.append(torch.stack([s[rows, at].float().cpu() for s in states]))  # (L+1, b, h)
                labels += [label] * len(ks)
                kinds += [items[k]["template"] for k in ks]
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(feats, 1).numpy(), np.asarray(labels), kinds


def probe(train, dev, test, l2: float | None) -> list[dict]:
    (xtr, ytr, _), (xdv, ydv, _), (xte, yte, kte) = train, dev, test
    out = []
    for layer in range(xtr.shape[0]):
        def fit(value):
            return fit_logistic_regression(torch.from_numpy(xtr[layer]), ytr.tolist(), 2, value)

        def accuracy(clf, x, y):
            return np.asarray(clf.predict(torch.from_numpy(x[layer]))) == y

        grid = [l2] if l2 is not None else list(L2_GRID)
        scored = [(float(accuracy(c, xdv, ydv).mean()), value, c) for value in grid for c in [fit(value)]]
        dev_acc, chosen, clf = max(scored, key=lambda t: (t[0], t[1]))  # ties: the stronger penalty
        right = accuracy(clf, xte, yte)
        out.append({"layer": layer, "l2": chosen, "train_accuracy": float(accuracy(clf, xtr, ytr).mean()),
                    "dev_accuracy": dev_acc, "test_accuracy": float(right.mean()),
                    "test_accuracy_by_template": {k: float(right[np.asarray(kte) == k].mean()) for k in TEMPLATES}})
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.replot:
        return common.replot(args.out, NAME + args.suffix, draw)
    t_start = time.monotonic()
    n_train = args.train_sentences or (40 if args.tiny else 800)
    n_test = args.test_sentences or (20 if args.tiny else 400)
    n_dev = args.dev_sentences or (12 if args.tiny else 300)
    cfg, rt = common.start(args)
    timings: dict[str, float] = {}
    ckpt = common.shared_checkpoint(cfg, args.work_dir, timings)
    t0 = time.monotonic()
    model, tok = load_pretrained(ckpt, rt.device)
    mask_id = tok.token_to_id(MASK)
    nouns = single_token(tok, NOUNS)
    verbs = [(v, p) for v, p in dict.fromkeys(VERBS) if single_token(tok, [v]) and single_token(tok, [p])]
    if len(nouns) < 8 or len(verbs) < 2:  # a tiny tokenizer: fall back to multi-piece words (first piece probed)
        nouns, verbs = list(dict.fromkeys(NOUNS)), list(dict.fromkeys(VERBS))
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(nouns))
    a, b = int(round(0.5 * len(nouns))), int(round(0.7 * len(nouns)))
    train_nouns, dev_nouns, test_nouns = ([nouns[i] for i in perm[:a]], [nouns[i] for i in perm[a:b]],
                                          [nouns[i] for i in perm[b:]])
    train_items = make_sentences(tok, n_train, train_nouns, verbs, rng)
    dev_items = make_sentences(tok, n_dev, dev_nouns, verbs, rng)
    test_items = make_sentences(tok, n_test, test_nouns, verbs, rng)
    common.log(f"{len(nouns)} single-token nouns ({len(train_nouns)} train / {len(dev_nouns)} dev / "
               f"{len(test_nouns)} test), {len(verbs)} verbs; {n_train} / {n_dev} / {n_test} sentences")

    random_model, _ = load_pretrained(ckpt, rt.device)
    torch.manual_seed(args.seed)
    random_model.reset_parameters()
    results = {}
    for mname, m in (("pretrained", model), ("random_init", random_model)):
        for cond, mask_verb in (("intact", False), ("verb_masked", True)):
            tr = layer_features(m, train_items, mask_verb, mask_id, rt.device)
            dv = layer_features(m, dev_items, mask_verb, mask_id, rt.device)
            te = layer_features(m, test_items, mask_verb, mask_id, rt.device)
            results[f"{mname}/{cond}"] = probe(tr, dv, te, args.l2)
            accs = [f"{r['test_accuracy']:.3f}" for r in results[f"{mname}/{cond}"]]
            common.log(f"{mname:11s} {cond:11s} test accuracy by layer (0 = embeddings): {' '.join(accs)}")
    timings["probing"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - t_start

    def final(key):
        return results[key][-1]["test_accuracy"]

    def best(key):
        r = max(results[key], key=lambda x: x["test_accuracy"])
        return {"layer": r["layer"], "test_accuracy": r["test_accuracy"]}

    headline = {
        "final_layer_intact": final("pretrained/intact"), "final_layer_verb_masked": final("pretrained/verb_masked"),
        "best_layer_intact": best("pretrained/intact"), "best_layer_verb_masked": best("pretrained/verb_masked"),
        "layer0_intact": results["pretrained/intact"][0]["test_accuracy"],
        "random_init_final_intact": final("random_init/intact"),
        "random_init_final_verb_masked": final("random_init/verb_masked"),
        "chance": 0.5,
    }
    example = test_items[0]
    result = {
        "experiment": NAME, "command": common.command_line(NAME, argv), "tiny": args.tiny, "seed": args.seed,
        "config": common.describe_config(cfg), "environment": common.environment(rt), "checkpoint": str(ckpt),
        "property": "semantic role of a noun token: agent (1) vs patient (0)",
        "templates": TEMPLATES, "nouns": {"train": train_nouns, "dev": dev_nouns, "test": test_nouns},
        "verbs": [v for v, _ in verbs], "l2": args.l2 if args.l2 is not None else f"chosen on dev from {list(L2_GRID)}",
        "example": {"tokens": [tok.id_to_token(i) for i in example["ids"]], **{k: example[k] for k in
                                                                                ("agent", "patient", "verb")}},
        "sizes": {"train_sentences": n_train, "dev_sentences": n_dev, "test_sentences": n_test,
                  "train_tokens": 2 * n_train, "test_tokens": 2 * n_test},
        "headline": headline, "by_layer": results, "seconds": timings,
    }
    common.write_json(args.out, NAME + args.suffix, result)
    common.write_plot(args.out, NAME + args.suffix, lambda plt: draw(plt, result))
    return 0


def draw(plt, r):
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    styles = {"pretrained/intact": ("C0", "-"), "pretrained/verb_masked": ("C1", "-"),
              "random_init/intact": ("C0", ":"), "random_init/verb_masked": ("C1", ":")}
    for key, rows in r["by_layer"].items():
        c, ls = styles[key]
        ax[0].plot([x["layer"] for x in rows], [x["test_accuracy"] for x in rows], marker="o", color=c, ls=ls,
                   label=key)
    ax[0].axhline(0.5, color="gray", lw=0.8)
    ax[0].set(title="agent-vs-patient probe, held-out nouns", xlabel="layer (0 = embeddings)",
              ylabel="test accuracy", ylim=(0.3, 1.02))
    ax[0].legend(fontsize=8)
    names = list(r["templates"])
    x = np.arange(len(names))
    for i, key in enumerate(("pretrained/intact", "pretrained/verb_masked")):
        last = r["by_layer"][key][-1]["test_accuracy_by_template"]
        ax[1].bar(x + (i - 0.5) * 0.38, [last[n] for n in names], 0.38, label=key, color=f"C{i}")
    ax[1].set_xticks(x, [n.replace("_", "\n") for n in names])
    ax[1].axhline(0.5, color="gray", lw=0.8)
    ax[1].set(title="final layer, by template", ylabel="test accuracy", ylim=(0, 1.05))
    ax[1].legend(fontsize=8)
    return fig


if __name__ == "__main__":
    sys.exit(main())
