"""Train the SAE shipped with the bundled model and measure its card.

    .venv/bin/python scripts/train_bundled_sae.py        # ~2-3 CPU minutes, one thread

A topk SAE (d_sae 512, k 12) on the residual stream entering block 3
(TransformerLens `blocks.3.hook_resid_pre`, engine ("resid_pre", 3)): the layer
where both the planted bias group and the context answer are linearly present
at the last position (measured while choosing it: a difference-of-means
direction separates group A from B with AUROC 1.00 at layer 3 vs 0.52-0.58 at
layers 1-2, and the logit lens reads the context answer 98% of the time from
layer 2 on). Activations come from the engine's own batched trace over a
corpus of the tasks the model was trained on (`nbinterp.bundled.tasks`, the
same mix as scripts/build_bundled_model.py); every real token, <bos> included,
is a training row. Saved in SAELens format (cfg.json + sae_weights.safetensors)
to nbinterp/bundled/sae/ with card.json: explained variance, L0 and dead
fraction on held-out prompts, and for each planted concept the feature that
separates it best (chosen on one held-out set, its AUROC measured on another).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import nbinterp as ni
from nbinterp.bundled import tasks
from nbinterp.engine.plan import Plan
from nbinterp.representations.sae import SparseAutoencoder

OUT = Path(__file__).resolve().parent.parent / "nbinterp" / "bundled" / "sae"
LAYER = 3
HOOK_NAME = f"blocks.{LAYER}.hook_resid_pre"
D_SAE, K, K_AUX = 512, 12, 64
STEPS, BATCH, LR, AUX_WEIGHT = 3000, 1024, 1e-3, 1 / 32
DEAD_AFTER = 200_000  # tokens without firing before a feature counts as dead (for the aux loss)
# the training mix of scripts/build_bundled_model.py (examples per step)
MIX = {"induction": 32, "context_override": 16, "ioi": 16, "facts": 8, "bias": 8}
N_CORPUS_STEPS = 100  # corpus = 100 steps of that mix = 8,000 training examples
HELD_OUT_SEED, SELECT_SEED, REPORT_SEED = 11, 101, 202
N_HELD_OUT = 120  # held-out prompts per task for the reconstruction figures
N_PER_ENTITY = 25  # held-out prompts per country / capital for the concept features
# sae-lens reads a config without this as a pre-6.0 one and renames its keys
SAE_LENS_FORMAT_VERSION = "6.0.0"


def pad(model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [model.tokenize(t)[0] for t in texts]
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), model.tokenizer.pad_token_id)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
    return input_ids, mask


@torch.no_grad()
def resid(model, texts: list[str], batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """("resid_pre", LAYER) of every text, [N, T, d] right-padded, and the mask."""
    input_ids, mask = pad(model, texts)
    out = []
    for i in range(0, len(texts), batch):
        saved = model.execute(input_ids[i:i + batch], Plan(), {"resid_pre": {LAYER}}, logits="none",
                              all_rows=True, attention_mask=mask[i:i + batch])
        out.append(saved["resid_pre"][LAYER].float())
    return torch.cat(out), mask.bool()


def corpus_texts() -> list[str]:
    texts = []
    for step in range(N_CORPUS_STEPS):
        for task, n in MIX.items():
            texts += [tasks.training_sequence(e)[0] for e in tasks.examples(task, n, seed=10_000 + step, split="train")]
    return texts


def held_out_texts() -> list[str]:
    """Held-out prompts of every task (with their answers, as in training text)."""
    return [f"{e.prompt} {e.target}" for task in tasks.TASKS
            for e in tasks.examples(task, N_HELD_OUT, seed=HELD_OUT_SEED, split="test")]


def train(x: torch.Tensor) -> SparseAutoencoder:
    torch.manual_seed(0)
    W_dec = torch.randn(D_SAE, x.shape[1])
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    sae = SparseAutoencoder(W_dec.T.clone(), W_dec, x.median(0).values, torch.zeros(D_SAE),
                            architecture="topk", k=K, hook_name=HOOK_NAME)
    optimizer = torch.optim.Adam(sae.parameters(), lr=LR)
    since_fired = torch.zeros(D_SAE)
    scale = (x - x.mean(0)).pow(2).sum(-1).mean()
    for step in range(STEPS):
        batch = x[torch.randint(len(x), (BATCH,))]
        pre = sae.pre_activations(batch)
        f = sae.encode(batch)
        recon = sae.decode(f)
        error = batch - recon
        loss = error.pow(2).sum(-1).mean() / scale
        since_fired += BATCH
        since_fired[(f > 0).any(0)] = 0
        dead = since_fired > DEAD_AFTER
        if dead.any():  # AuxK: dead features learn to reconstruct what the live ones miss
            dead_pre = pre.masked_fill(~dead, -torch.inf)
            values, indices = dead_pre.topk(min(K_AUX, int(dead.sum())), dim=-1)
            aux = torch.zeros_like(pre).scatter(-1, indices, values.relu()) @ sae.W_dec
            loss = loss + AUX_WEIGHT * (error.detach() - aux).pow(2).sum(-1).mean() / scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # unit decoder rows: activations carry the scale
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        if step % 500 == 0 or step == STEPS - 1:
            print(f"step {step}: fvu {loss.item():.4f}, dead {int(dead.sum())}", flush=True)
    return sae.requires_grad_(False)


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """AUROC of each column of scores [N, F] for the rows marked positive (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = torch.zeros(scores.shape[1])
    for chunk in pos.split(16):
        greater += ((chunk[:, None] > neg[None]).float() + 0.5 * (chunk[:, None] == neg[None]).float()).sum((0, 1))
    return greater / (len(pos) * len(neg))


def concept_sets(seed: int) -> dict[str, tuple[list[str], list[int], list[str]]]:
    """concept -> (prompts, token position read in each, label of each prompt)."""
    bias = tasks.examples("bias", 200, seed=seed, split="test")
    context = tasks.examples("context_override", N_PER_ENTITY * len(tasks.CAPITALS), seed=seed,
                             split="test", **tasks.CONTEXT_VARIANTS["plain"])
    facts = tasks.examples("facts", N_PER_ENTITY * len(tasks.COUNTRIES), seed=seed, split="test")
    last = lambda e: len(e.prompt.split())  # noqa: E731  (token 0 is <bos>)
    return {
        "bias_group": ([e.prompt for e in bias], [last(e) for e in bias], [e.meta["group"] for e in bias]),
        "context_answer": ([e.prompt for e in context], [last(e) for e in context],
                           [e.meta["context_answer"] for e in context]),
        "country": ([e.prompt for e in facts], [1 + e.prompt.split().index(e.meta["country"]) for e in facts],
                    [e.meta["country"] for e in facts]),
    }


@torch.no_grad()
def concept_features(model, sae) -> dict:
    select, report = concept_sets(SELECT_SEED), concept_sets(REPORT_SEED)
    where = {
        "bias_group": "last prompt token of held-out bias prompts (unseen given names), group A vs group B clans",
        "context_answer": "last prompt token of held-out context_override prompts (plain variant): "
                          "the capital the context states vs every other",
        "country": "the country token of held-out facts prompts ('The capital of X is'): that country vs every other",
    }
    card = {}
    for concept in select:
        acts = {}
        for name, (texts, positions, labels) in (("select", select[concept]), ("report", report[concept])):
            x, _ = resid(model, texts)
            acts[name] = (sae.encode(x[torch.arange(len(texts)), torch.tensor(positions)]), labels)
        values = sorted(set(acts["select"][1]))
        entries = {}
        for value in values:
            f_sel, lab_sel = acts["select"]
            best = int(auroc(f_sel, torch.tensor([v == value for v in lab_sel])).argmax())
            f_rep, lab_rep = acts["report"]
            positive = torch.tensor([v == value for v in lab_rep])
            entries[value] = {
                "feature": best, "auroc": round(float(auroc(f_rep[:, best:best + 1], positive)[0]), 4),
                "mean_positive": round(float(f_rep[positive, best].mean()), 4),
                "mean_negative": round(float(f_rep[~positive, best].mean()), 4),
                "n_positive": int(positive.sum()), "n_negative": int((~positive).sum()),
            }
        aurocs = [e["auroc"] for e in entries.values()]
        card[concept] = {"where": where[concept], "features": entries,
                         "mean_auroc": round(sum(aurocs) / len(aurocs), 4), "min_auroc": min(aurocs)}
        print(concept, "mean AUROC", card[concept]["mean_auroc"], "min", card[concept]["min_auroc"], flush=True)
    return card


def main() -> None:
    torch.set_num_threads(1)  # the machine's cores are shared
    start = time.time()
    model = ni.load()
    x, mask = resid(model, corpus_texts())
    train_x = x[mask]
    print(f"{len(train_x)} training tokens in {time.time() - start:.0f}s", flush=True)
    sae = train(train_x)
    train_seconds = time.time() - start

    held, held_mask = resid(model, held_out_texts())
    tokens = held[held_mask]
    not_bos = held[:, 1:][held_mask[:, 1:]]
    f = sae.encode(tokens)
    figures = {
        "prompts": f"tasks.examples(task, {N_HELD_OUT}, seed={HELD_OUT_SEED}, split='test') for each task in tasks.TASKS, "
                   "text = prompt + ' ' + target",
        "n_tokens": len(tokens),
        "explained_variance": round(sae.explained_variance(tokens), 4),
        "explained_variance_without_bos": round(sae.explained_variance(not_bos), 4),
        "l0": round(float((f > 0).sum(-1).float().mean()), 3),
        "dead_fraction": round(float(((f > 0).sum(0) == 0).float().mean()), 4),
        "definitions": "explained variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the tokens; "
                       "l0 = mean number of non-zero features per token; dead = never non-zero on these tokens",
    }
    print(figures, flush=True)
    concepts = concept_features(model, sae)

    OUT.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in sae.named_parameters()}, str(OUT / "sae_weights.safetensors"))
    cfg = {
        "d_in": sae.d_in, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAE_LENS_FORMAT_VERSION, "sae_lens_training_version": None,
                     "model_name": BUNDLED_MODEL_NAME, "hook_name": HOOK_NAME, "prepend_bos": True,
                     "context_size": 128},
        "k": K, "rescale_acts_by_decoder_norm": False, "architecture": "topk",
    }
    (OUT / "cfg.json").write_text(json.dumps(cfg, indent=1) + "\n")
    card = {
        "hook_name": HOOK_NAME, "site": ["resid_pre", LAYER], "architecture": "topk", "d_sae": D_SAE, "k": K,
        "training": {"corpus": f"tasks.training_sequence of {N_CORPUS_STEPS} steps of the training mix {MIX} "
                               "(split='train', seeds 10000+step); every real token incl. <bos>",
                     "n_tokens": len(train_x), "steps": STEPS, "batch_tokens": BATCH, "lr": LR,
                     "aux_k": K_AUX, "aux_weight": AUX_WEIGHT, "seconds_one_thread": round(train_seconds)},
        "held_out": figures,
        "concepts": {"selection": f"feature with the best AUROC on held-out prompts of seed {SELECT_SEED}; "
                                  f"auroc and means measured on held-out prompts of seed {REPORT_SEED}",
                     "seeds": {"select": SELECT_SEED, "report": REPORT_SEED}, **concepts},
    }
    (OUT / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"saved to {OUT} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
