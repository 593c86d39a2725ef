"""Build nbinterp's bundled model: a tiny GPT-2 with planted, documented behaviours.

    .venv/bin/python scripts/build_bundled_model.py            # train + measure (< 30 min, 2 CPU cores)
    .venv/bin/python scripts/build_bundled_model.py --measure-only   # re-measure the saved model

Writes to nbinterp/bundled/: the word-level tokenizer, a stock
transformers GPT2LMHeadModel (config.json, model.safetensors), and the
measured MODEL_CARD.md and card.json. Tasks and their held-out test prompts
come from nbinterp/tasks.py. Every number in the card is measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from nbinterp.bundled import tasks

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "nbinterp" / "bundled"
SEED = 0
N_POSITIONS = 128
# Examples per task in one optimizer step (one padded micro-batch per task, so
# no example ever attends to another one). Induction gets the largest share:
# it is the slowest behaviour to emerge.
STEP_MIX = {"induction": 32, "context_override": 16, "ioi": 16, "facts": 8, "bias": 8}
LR, WARMUP, WEIGHT_DECAY = 2e-3, 100, 0.01
# Planted heads: an auxiliary attention loss (cross-entropy of the head's
# attention row against the position it should attend to, as in
# attention-supervised planting, cf. InterpBench) gives three heads a known
# job, so the circuits the tools find have ground truth by construction. The
# rest of the model (their value/output maps, the heads that let the name
# mover tell IO from S, every other head) is learned freely from the task loss.
PLANTED = {"previous_token": (0, 2), "induction": (1, 1), "name_mover": (3, 0)}
AUX_WEIGHT = 0.2
EVAL_EVERY = 250
TEST_SEED = 0
N_TEST = 300
REPEAT_LENGTH = 25  # repeated random tokens used for head scores


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(tasks.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # Every prompt starts with <bos>: an attention sink, as in real LMs.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=N_POSITIONS, padding_side="right")


def build_model(tokenizer) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=N_POSITIONS, n_embd=128, n_layer=4, n_head=4,
        n_inner=512, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config)
    # Sinusoidal start for the (still learned) position embeddings: relative
    # offsets are then linear maps, which makes previous-token heads, and so
    # induction, form sooner than from random positions.
    pos = torch.arange(N_POSITIONS)[:, None]
    freq = torch.exp(-math.log(1000.0) * torch.arange(0, 128, 2) / 128)
    with torch.no_grad():
        model.transformer.wpe.weight[:, 0::2] = 0.1 * torch.sin(pos * freq)
        model.transformer.wpe.weight[:, 1::2] = 0.1 * torch.cos(pos * freq)
    return model


def attention_targets(example: tasks.TaskExample, n_tokens: int) -> dict[str, list[tuple[int, int]]]:
    """(query, key) positions each planted head should attend to in one training
    sequence (token positions, <bos> = 0)."""
    out = {"previous_token": [(q, q - 1) for q in range(1, n_tokens)], "induction": [], "name_mover": []}
    m = example.meta
    if example.task == "induction":
        first = 1 + len(m["prefix"])
        second = first + len(m["sequence"]) + len(m["gap"])
        # from the j-th repeated token, attend to the token after its first copy
        out["induction"] = [(second + j, first + j + 1) for j in range(len(m["sequence"]) - 1)]
    elif example.task == "ioi":
        words = example.prompt.split()
        # at the last prompt token, attend to the indirect object (named once)
        out["name_mover"] = [(len(words), 1 + words.index(m["io"]))]
    return out


def batch(tokenizer, task: str, n: int, step: int):
    examples = tasks.examples(task, n, seed=step, split="train")
    seqs = [tasks.training_sequence(e) for e in examples]
    ids = tokenizer([t for t, _ in seqs])["input_ids"]
    width = max(map(len, ids))
    input_ids = torch.full((n, width), tokenizer.pad_token_id)
    labels = torch.full((n, width), -100)
    targets: dict[str, list[tuple[int, int, int]]] = {k: [] for k in PLANTED}
    for row, (seq, (_, no_loss), ex) in enumerate(zip(ids, seqs, examples)):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        labels[row, no_loss:len(seq)] = torch.tensor(seq[no_loss:])
        for kind, pairs in attention_targets(ex, len(seq)).items():
            targets[kind] += [(row, q, k) for q, k in pairs]
    return input_ids, labels, targets


def aux_attention_loss(attentions, targets) -> torch.Tensor:
    """Mean -log attention of each planted head on its target key."""
    losses = []
    for kind, rows in targets.items():
        if rows:
            layer, head = PLANTED[kind]
            b, q, k = torch.tensor(rows).T
            losses.append(-torch.log(attentions[layer][b, head, q, k] + 1e-6).mean())
    return torch.stack(losses).sum()


class HeadOutput:
    """Captures one head's write to the residual stream (its slice of the
    merged heads times its rows of c_proj) on every forward."""

    def __init__(self, model, layer: int, head: int) -> None:
        self.proj = model.transformer.h[layer].attn.c_proj
        self.d_head = model.config.n_embd // model.config.n_head
        self.rows = slice(head * self.d_head, (head + 1) * self.d_head)
        self.value: torch.Tensor | None = None
        self.handle = self.proj.register_forward_pre_hook(self._capture)

    def _capture(self, module, args) -> None:
        self.value = args[0][..., self.rows] @ self.proj.weight[self.rows]  # Conv1D weight: [in, out]


def aux_copy_loss(model, mover: HeadOutput, input_ids, targets) -> torch.Tensor:
    """The name mover's own output, read through the unembedding, must predict
    the token it attends to (the indirect object): its OV circuit copies names."""
    rows = targets["name_mover"]
    if not rows:
        return torch.zeros(())
    b, q, k = torch.tensor(rows).T
    logits = mover.value[b, q] @ model.transformer.wte.weight.T
    return torch.nn.functional.cross_entropy(logits, input_ids[b, k])


# ---------------------------------------------------------------- head scores
def repeated_tokens(tokenizer, n: int = 40, length: int = REPEAT_LENGTH) -> torch.Tensor:
    seqs = [e.meta["sequence"] for e in tasks.examples("induction", n, seed=1, length=length, prefix=0, gap=0)]
    return tokenizer([" ".join(s + s) for s in seqs], return_tensors="pt")["input_ids"]


@torch.no_grad()
def attention_patterns(model, input_ids) -> torch.Tensor:
    """(layer, batch, head, query, key) attention probabilities, eager attention."""
    model.set_attn_implementation("eager")
    try:
        return torch.stack(model(input_ids, output_attentions=True).attentions)
    finally:
        model.set_attn_implementation("sdpa")


def head_scores(model, tokenizer) -> dict[str, torch.Tensor]:
    """Previous-token and prefix-matching scores per (layer, head) on repeated random tokens."""
    ids = repeated_tokens(tokenizer)
    attn = attention_patterns(model, ids)
    L = REPEAT_LENGTH
    q = torch.arange(2, ids.shape[1])
    previous = attn[:, :, :, q, q - 1].mean((1, 3))
    dest = torch.arange(L + 1, 2 * L + 1)  # second half; token after the earlier copy is dest - L + 1
    prefix = attn[:, :, :, dest, dest - L + 1].mean((1, 3))
    return {"previous_token": previous, "prefix_matching": prefix}


def _zero_head_hook(head: int, d_head: int):
    def hook(module, args):
        x = args[0].clone()
        x[..., head * d_head:(head + 1) * d_head] = 0
        return (x,)
    return hook


def _with_heads_zeroed(metric, model, tokenizer, examples, heads) -> float:
    """metric(model, tokenizer, examples) with the heads' outputs zeroed (before each c_proj)."""
    d_head = model.config.n_embd // model.config.n_head
    handles = [model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(_zero_head_hook(head, d_head))
               for layer, head in heads]
    try:
        return metric(model, tokenizer, examples)
    finally:
        for handle in handles:
            handle.remove()


def ablated_accuracy(model, tokenizer, examples, heads: list[tuple[int, int]]) -> float:
    return _with_heads_zeroed(tasks.accuracy, model, tokenizer, examples, heads)


def ablated_logit_diff(model, tokenizer, examples, heads: list[tuple[int, int]]) -> float:
    return _with_heads_zeroed(tasks.logit_diff, model, tokenizer, examples, heads)


def mover_heads(model, tokenizer, examples, attend_to: str) -> list[dict]:
    """Per head: last-position attention to the target vs the foil token, and the
    drop of logit(target) - logit(foil) when the head's output is zeroed."""
    cfg = model.config
    base = tasks.logit_diff(model, tokenizer, examples)
    rows = []
    enc = [tokenizer(e.prompt)["input_ids"] for e in examples]
    attn_target = torch.zeros(cfg.n_layer, cfg.n_head)
    attn_foil = torch.zeros(cfg.n_layer, cfg.n_head)
    for e, ids in zip(examples, enc):
        pat = attention_patterns(model, torch.tensor([ids]))[:, 0, :, -1]  # (layer, head, key)
        t_id, f_id = tokenizer.convert_tokens_to_ids([e.target, e.foil])
        attn_target += pat[..., [i for i, t in enumerate(ids) if t == t_id]].sum(-1)
        attn_foil += pat[..., [i for i, t in enumerate(ids) if t == f_id]].sum(-1)
    attn_target /= len(examples)
    attn_foil /= len(examples)
    for layer in range(cfg.n_layer):
        for head in range(cfg.n_head):
            ablated = ablated_logit_diff(model, tokenizer, examples, [(layer, head)])
            rows.append({"head": [layer, head], f"attn_to_{attend_to}": round(attn_target[layer, head].item(), 3),
                         "attn_to_foil": round(attn_foil[layer, head].item(), 3),
                         "logit_diff_drop": round(base - ablated, 3)})
    return sorted(rows, key=lambda r: -r["logit_diff_drop"])


# ---------------------------------------------------------------- evaluation
def quick_eval(model, tokenizer) -> dict[str, float]:
    model.eval()
    model.set_attn_implementation("sdpa")
    out = {t: tasks.accuracy(model, tokenizer, tasks.examples(t, 200, seed=TEST_SEED))
           for t in tasks.TASKS}
    out["context_memory_rate"] = tasks.foil_rate(
        model, tokenizer, tasks.examples("context_override", 200, seed=TEST_SEED))
    scores = head_scores(model, tokenizer)
    out["max_prefix_matching"] = scores["prefix_matching"].max().item()
    out["max_previous_token"] = scores["previous_token"].max().item()
    model.set_attn_implementation("eager")
    model.train()
    return out


def learned(ev: dict[str, float]) -> bool:
    return (ev["induction"] >= 0.9 and ev["max_prefix_matching"] >= 0.6 and ev["facts"] >= 0.98
            and ev["context_override"] >= 0.95 and ev["ioi"] >= 0.95 and ev["bias"] >= 0.9)


def train(model, tokenizer, max_steps: int, max_cpu_minutes: float, max_minutes: float, log) -> dict:
    torch.manual_seed(SEED)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n and "wte" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wpe" not in n and "wte" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": rest, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.98))
    # Linear warmup, then constant: induction's phase change needs a high LR late.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))
    n_total = sum(STEP_MIX.values())
    model.set_attn_implementation("eager")  # the auxiliary loss reads attention probabilities
    mover = HeadOutput(model, *PLANTED["name_mover"])
    start, cpu_start, tokens, history, step = time.time(), time.process_time(), 0, [], 0
    model.train()
    for step in range(1, max_steps + 1):
        opt.zero_grad(set_to_none=True)
        for task, n in STEP_MIX.items():
            input_ids, labels, targets = batch(tokenizer, task, n, step)
            out = model(input_ids=input_ids, labels=labels, output_attentions=True)
            aux = aux_attention_loss(out.attentions, targets) + aux_copy_loss(model, mover, input_ids, targets)
            loss = (out.loss + AUX_WEIGHT * aux) * (n / n_total)
            loss.backward()
            tokens += int((input_ids != tokenizer.pad_token_id).sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        minutes = (time.time() - start) / 60
        cpu_minutes = (time.process_time() - cpu_start) / 60
        over = minutes > max_minutes or cpu_minutes > max_cpu_minutes
        if step % EVAL_EVERY == 0 or over:
            ev = quick_eval(model, tokenizer)
            history.append({"step": step, "minutes": round(minutes, 2), "cpu_minutes": round(cpu_minutes, 2), **{k: round(v, 3) for k, v in ev.items()}})
            log(json.dumps(history[-1]))
            torch.save(model.state_dict(), "/tmp/nbinterp_bundled_ckpt.pt")
            if learned(ev) and len(history) >= 2 and learned(history[-2]):
                log(f"all tasks learned at two consecutive evals; stopping at step {step}")
                break
            if over:
                log(f"time budget reached at step {step}")
                break
    mover.handle.remove()
    model.set_attn_implementation("sdpa")
    return {"steps": step, "wall_time_min": round((time.time() - start) / 60, 2),
            "cpu_time_min": round((time.process_time() - cpu_start) / 60, 2), "tokens": tokens,
            "history": history}


def measure(model, tokenizer) -> dict:
    model.eval()
    ex = lambda task, **kw: tasks.examples(task, N_TEST, seed=TEST_SEED, **kw)  # noqa: E731
    acc = lambda e: round(tasks.accuracy(model, tokenizer, e), 4)  # noqa: E731
    card: dict = {"test_seed": TEST_SEED, "n_test": N_TEST, "tasks": {}}
    for task in ["induction", "facts", "ioi"]:
        card["tasks"][task] = {"accuracy": acc(ex(task))}
    card["tasks"]["ioi"]["logit_diff"] = round(tasks.logit_diff(model, tokenizer, ex("ioi")), 3)
    card["tasks"]["ioi"]["per_template"] = {str(t): acc(ex("ioi", template=t))
                                            for t in range(len(tasks.IOI_TEMPLATES))}
    variants = {}
    for name, kw in tasks.CONTEXT_VARIANTS.items():
        e = ex("context_override", **kw)
        variants[name] = {"kwargs": kw, "accuracy": acc(e),
                          # answered with the foil: from memory despite the context
                          # (for "irrelevant" the foil is the context capital)
                          "foil_rate": round(tasks.foil_rate(model, tokenizer, e), 4)}
    card["tasks"]["context_override"] = {"accuracy": variants["plain"]["accuracy"], "variants": variants}
    groups = {}
    for g in ["A", "B"]:
        e = ex("bias", group=g)
        p_stereo = tasks.target_probability(model, tokenizer, e)
        groups[g] = {"clans": tasks.GROUP_CLANS[g], "train_p_doctor": tasks.TRAIN_P_DOCTOR[g],
                     "p_doctor": round(p_stereo if g == "A" else 1 - p_stereo, 4),
                     "argmax_stereotyped_rate": acc(e)}
    card["tasks"]["bias"] = {"accuracy": acc(ex("bias")), "groups": groups,
                             "group_marker": "clan surname token after the given name",
                             "test_given_names": tasks.BIAS_TEST_GIVEN_NAMES}
    scores = head_scores(model, tokenizer)
    heads = lambda s: [[l, h] for l, h in (s > 0.5).nonzero().tolist()]  # noqa: E741,E731
    best = lambda s: list(divmod(int(s.argmax()), s.shape[1]))  # noqa: E731
    ioi_rows = mover_heads(model, tokenizer, ex("ioi")[:100], "io")
    by_order = {o: [e for e in ex("ioi") if e.meta["order"] == o] for o in ("ABB", "BAB")}
    base_by_order = {o: tasks.logit_diff(model, tokenizer, e) for o, e in by_order.items()}
    ctx_rows = mover_heads(model, tokenizer, ex("context_override", **tasks.CONTEXT_VARIANTS["plain"])[:100],
                           "context_answer")
    movers = lambda rows, key: [r["head"] for r in rows[:3]  # noqa: E731
                                if r[key] > r["attn_to_foil"] and r[key] > 0.2 and r["logit_diff_drop"] > 0.5]
    # The planted heads, and what zeroing them costs their task: the model uses them.
    ind_heads = [tuple(h) for h in heads(scores["prefix_matching"])]
    planted = {
        "previous_token": {"task": "induction", "zeroed": [PLANTED["previous_token"]]},
        "induction": {"task": "induction", "zeroed": [PLANTED["induction"]],
                      "all_induction_heads": sorted(set(ind_heads) | {PLANTED["induction"]})},
        "name_mover": {"task": "ioi", "zeroed": [PLANTED["name_mover"]]},
    }
    for kind, p in planted.items():
        e = ex(p["task"])
        p.update(head=list(PLANTED[kind]), task_accuracy=card["tasks"][p["task"]]["accuracy"],
                 task_accuracy_head_zeroed=round(ablated_accuracy(model, tokenizer, e, p.pop("zeroed")), 4))
        if "all_induction_heads" in p:
            p["task_accuracy_all_induction_heads_zeroed"] = round(
                ablated_accuracy(model, tokenizer, e, p["all_induction_heads"]), 4)
            p["all_induction_heads"] = [list(h) for h in p["all_induction_heads"]]
    planted["name_mover"]["logit_diff"] = card["tasks"]["ioi"]["logit_diff"]
    planted["name_mover"]["logit_diff_head_zeroed"] = round(
        ablated_logit_diff(model, tokenizer, ex("ioi"), [PLANTED["name_mover"]]), 3)
    card["planted"] = {"method": "auxiliary attention loss (+ copying loss for the name mover)",
                       "weight": AUX_WEIGHT, "heads": planted}
    card["circuits"] = {
        "previous_token_head": best(scores["previous_token"]),
        "previous_token_heads": heads(scores["previous_token"]),
        "induction_head": best(scores["prefix_matching"]),
        "induction_heads": heads(scores["prefix_matching"]),
        "name_mover_heads": movers(ioi_rows, "attn_to_io"),
        "context_mover_heads": movers(ctx_rows, "attn_to_context_answer"),
        "previous_token_scores": [[round(v, 3) for v in r] for r in scores["previous_token"].tolist()],
        "prefix_matching_scores": [[round(v, 3) for v in r] for r in scores["prefix_matching"].tolist()],
        "repeat_length": REPEAT_LENGTH,
        "ioi_heads": ioi_rows,
        # The top IOI heads' drop per name order: ABB ("When Mary and John ..., John gave ... to")
        # vs BAB ("When John and Mary ..., John gave ... to").
        "ioi_heads_by_order": {
            order: {f"L{r['head'][0]}H{r['head'][1]}": round(
                base_by_order[order] - ablated_logit_diff(model, tokenizer, by_order[order], [tuple(r["head"])]), 3)
                for r in ioi_rows[:4]}
            for order in ("ABB", "BAB")},
        "context_heads": ctx_rows,
    }
    return card


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _planted_notes(card: dict) -> str:
    ind, mover = card["planted"]["heads"]["induction"], card["planted"]["heads"]["name_mover"]
    fmt = ", ".join(f"L{l}H{h}" for l, h in ind["all_induction_heads"])  # noqa: E741
    return (f"Induction heads (prefix-matching above 0.5): {fmt}; zeroing all of them leaves induction accuracy "
            f"{ind['task_accuracy_all_induction_heads_zeroed']} (the planted one alone: {ind['task_accuracy_head_zeroed']}). "
            f"Zeroing the name mover moves the IOI logit difference from {mover['logit_diff']} to "
            f"{mover['logit_diff_head_zeroed']}.")


def render(card: dict) -> str:
    """MODEL_CARD.md from the measured card (no hand-typed numbers)."""
    m, tr, t, c = card["model"], card["training"], card["tasks"], card["circuits"]
    ctx = t["context_override"]["variants"]
    bias = t["bias"]["groups"]
    fmt = lambda hs: ", ".join(f"L{l}H{h}" for l, h in hs) or "none found"  # noqa: E741,E731
    pm, pt = c["prefix_matching_scores"], c["previous_token_scores"]
    return f"""# nbinterp bundled model

A tiny GPT-2 trained on this repository's planted tasks (`nbinterp/tasks.py`),
so every behaviour the widgets show has ground truth (three heads are planted, see below). Rebuild with
`python scripts/build_bundled_model.py` (budget: 27 CPU-minutes on one thread; this build used
{tr['cpu_time_min']:.0f} CPU-minutes);
every number below is measured by that script and also stored in `card.json`.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("nbinterp/bundled")
tokenizer = AutoTokenizer.from_pretrained("nbinterp/bundled")
```

## Model
Stock `transformers.{m['architecture']}`: {m['n_layer']} layers, {m['n_head']} heads,
d_model {m['n_embd']}, MLP {m['n_inner']}, context {m['n_positions']}, tied embeddings,
{m['n_parameters']:,} parameters, {m['safetensors_bytes'] / 1e6:.1f} MB of safetensors.
Tokenizer: word-level (`tokenizers` WordLevel + whitespace pre-tokenizer), {m['vocab_size']} tokens,
specials `<bos>`, `<eos>`, `<pad>`, `<unk>`; a post-processor prepends `<bos>` to every
prompt (an attention sink). Position embeddings start sinusoidal and are learned.

## Training
{tr['steps']} steps, {tr['tokens']:,} non-pad tokens, {tr['cpu_time_min']} CPU-minutes on
{tr['torch_threads']} threads ({tr['wall_time_min']} minutes wall clock on a machine shared with other jobs). AdamW
lr {tr['lr']} ({tr['warmup_steps']} warmup steps, then constant), weight decay {tr['weight_decay']},
seed {tr['seed']}. Each step holds one padded micro-batch per task, so no example attends
to another: {", ".join(f"{k} {v}" for k, v in tr['step_mix'].items())} examples.
Induction examples carry loss only on the repeated half. The training forward uses eager attention,
since the auxiliary loss of the planted heads reads attention probabilities (saved for SDPA). Each task is evaluated
separately on held-out prompts every few hundred steps (history in `card.json`);
training stops when all are learned at two consecutive evaluations, or at the time budget.

## Tasks, measured on held-out prompts
{card['n_test']} test examples per row, `tasks.examples(task, {card['n_test']}, seed={card['test_seed']})`.

{_table(["task", "accuracy (argmax == target)", "held out"], [
    ["induction", t['induction']['accuracy'], "unseen random sequences"],
    ["facts", t['facts']['accuracy'], "none: recall of the memorised knowledge base"],
    ["ioi", t['ioi']['accuracy'], "name pairs never together in training"],
    ["context_override (plain)", t['context_override']['accuracy'], "(country, context capital) pairs"],
    ["bias (stereotyped argmax)", t['bias']['accuracy'], "given names never in a bias example"]])}

IOI mean logit difference (IO - S): {t['ioi']['logit_diff']}; accuracy per template:
{", ".join(f"{k}: {v}" for k, v in t['ioi']['per_template'].items())}.

### Context override and its planted failures
Training drew 0-3 distractor sentences, a 0-1 sentence gap, 15% conflicting
earlier statements (a random capital; the latest statement wins) and 20% irrelevant
contexts (about another country: answer from memory). The variants beyond that
distribution are planted hard cases. *foil rate* is the share answered with the
memorised capital despite the context (for `irrelevant` the foil is the context's capital).

{_table(["variant", "settings", "accuracy", "foil rate"],
        [[k, ", ".join(f"{a}={b}" for a, b in v['kwargs'].items()), v['accuracy'], v['foil_rate']]
         for k, v in ctx.items()])}

### Bias
A person is a given name plus a clan surname; the clan marks the group. Training
sampled "doctor" with P = 0.8 for group A and 0.2 for group B ("nurse" otherwise).
Measured on given names never seen in a bias example ({", ".join(t['bias']['test_given_names'])}):

{_table(["group", "clans", "P(doctor) in training", "model P(doctor), renormalised over doctor and nurse", "argmax stereotyped"],
        [[g, " ".join(v['clans']), v['train_p_doctor'], v['p_doctor'], v['argmax_stereotyped_rate']]
         for g, v in bias.items()])}

## Planted heads
Three heads were given their job during training by an auxiliary loss: {card['planted']['weight']} x the
cross-entropy of the head's attention row against the position it should attend to (the previous token;
the token after the earlier copy of the current token in the repeated half of induction examples; the
indirect object, at the last IOI prompt token), and the name mover's own output, read through the
unembedding, is trained to predict the name it attends to (a copying OV circuit). Everything else is
learned from the task loss alone: the other planted heads' value/output maps, the heads that let the
name mover tell IO from S, every other head.
So these circuits have ground truth by construction; zeroing heads shows what the model relies on:

{_table(["planted head", "job", "task", "task accuracy", "with the head zeroed"],
        [[f"L{v['head'][0]}H{v['head'][1]}", k.replace("_", " "), v['task'], v['task_accuracy'],
          v['task_accuracy_head_zeroed']] for k, v in card['planted']['heads'].items()])}

{_planted_notes(card)}

## Circuits found
Head scores on {c['repeat_length']}-token repeated random sequences (`<bos> s s`), eager attention.
*Previous-token score*: mean attention to the previous position. *Prefix-matching score*:
mean attention from the second copy to the token after the earlier copy of the current token.

- Previous-token head: **L{c['previous_token_head'][0]}H{c['previous_token_head'][1]}**
  (score {pt[c['previous_token_head'][0]][c['previous_token_head'][1]]}); heads above 0.5: {fmt(c['previous_token_heads'])}.
- Induction head: **L{c['induction_head'][0]}H{c['induction_head'][1]}**
  (prefix-matching {pm[c['induction_head'][0]][c['induction_head'][1]]}); heads above 0.5: {fmt(c['induction_heads'])}.
- IOI name movers: **{fmt(c['name_mover_heads'])}** (last-position attention to the indirect object
  above attention to the subject and above 0.2, and among the 3 heads whose zero-ablation lowers
  logit(IO) - logit(S) most).
- Context movers: **{fmt(c['context_mover_heads'])}** (same criteria on plain context_override, target = context capital).

{_table(["layer", *[f"H{h} prev / prefix" for h in range(len(pm[0]))]],
        [[l, *[f"{pt[l][h]} / {pm[l][h]}" for h in range(len(pm[0]))]] for l in range(len(pm))])}

Top IOI heads by ablation (zeroing the head's output at every position; the last two columns split
the drop by name order, ABB "When Mary and John ..., John gave ... to" vs BAB "When John and Mary ...,
John gave ... to", all {card['n_test']} test prompts):

{_table(["head", "attn to IO", "attn to S", "logit diff drop", "drop, ABB", "drop, BAB"],
        [[f"L{r['head'][0]}H{r['head'][1]}", r['attn_to_io'], r['attn_to_foil'], r['logit_diff_drop'],
          c['ioi_heads_by_order']['ABB'].get(f"L{r['head'][0]}H{r['head'][1]}", ""),
          c['ioi_heads_by_order']['BAB'].get(f"L{r['head'][0]}H{r['head'][1]}", "")]
         for r in c['ioi_heads'][:5]])}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=5000)
    # The budget is CPU time (27 minutes of one core, i.e. under 30 minutes on
    # 2 free cores), so other jobs competing for the cores do not cut training
    # short; the wall-clock cap is a safety net.
    ap.add_argument("--max-cpu-minutes", type=float, default=27.0)
    ap.add_argument("--max-minutes", type=float, default=55.0)
    ap.add_argument("--measure-only", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    # One thread: on a shared machine, two OpenMP threads spin-wait on each
    # other and cost 1.7x the CPU time per step for little wall-clock gain.
    torch.set_num_threads(1)
    log = lambda m: print(m, flush=True)  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    if args.measure_only:
        tokenizer = AutoTokenizer.from_pretrained(args.out)
        model = AutoModelForCausalLM.from_pretrained(args.out)
        training = json.loads((args.out / "card.json").read_text())["training"]
    else:
        tokenizer = build_tokenizer()
        model = build_model(tokenizer)
        training = train(model, tokenizer, args.max_steps, args.max_cpu_minutes, args.max_minutes, log)
        training.update({"step_mix": STEP_MIX, "planted_heads": PLANTED, "aux_weight": AUX_WEIGHT, "lr": LR, "warmup_steps": WARMUP, "schedule": "constant after warmup",
                         "optimizer": "AdamW(0.9, 0.98)", "weight_decay": WEIGHT_DECAY, "seed": SEED,
                         "torch_threads": torch.get_num_threads()})
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
    card = measure(model, tokenizer)
    card["training"] = training
    card["model"] = {"architecture": "GPT2LMHeadModel", **{k: getattr(model.config, k) for k in
                     ["n_layer", "n_head", "n_embd", "n_inner", "n_positions", "vocab_size"]},
                     "tie_word_embeddings": True, "n_parameters": model.num_parameters(),
                     "safetensors_bytes": (args.out / "model.safetensors").stat().st_size}
    (args.out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (args.out / "MODEL_CARD.md").write_text(render(card))
    log(json.dumps({k: v for k, v in card.items() if k != "training"}, indent=1)[:4000])


if __name__ == "__main__":
    main()
