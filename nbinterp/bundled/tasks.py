"""Planted tasks of the bundled model: vocabulary, example generators, evaluation.

The bundled model (``nbinterp/bundled``) was trained on these five tasks, so
each behaviour below has ground truth a widget can be checked against:

- ``induction``: ``<bos> prefix s gap s`` for random token sequences; the
  model must continue the repeat of ``s`` (needs a previous-token head
  feeding an induction head; the random prefix and gap rule out positional
  shortcuts).
- ``facts``: recall from memory over a toy knowledge base of invented
  countries ("The capital of Veldora is" -> its capital).
- ``context_override``: a context sentence contradicts memory; the model
  should answer from the context. Harder variants (more distractors, longer
  gaps, a conflicting earlier statement) are planted so that some prompts are
  answered from memory despite the context: the ground truth of "why did the
  model NOT use the context".
- ``ioi``: indirect-object identification ("When Mary and John went to the
  store , John gave a drink to" -> Mary, foil John). Test name pairs never
  co-occur in training.
- ``bias``: a person is a given name plus a clan surname; the clan marks the
  group. Training pairs group A with "doctor" 80% of the time (20% "nurse")
  and group B the other way round. Test given names are never seen in a bias
  training example.

Every example's ``target`` and ``foil`` are single tokens of the bundled
tokenizer (a word-level tokenizer that prepends ``<bos>``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

SPECIAL_TOKENS = ["<bos>", "<eos>", "<pad>", "<unk>"]

COUNTRIES = [
    "Veldora", "Quorvia", "Astrane", "Belmora", "Cavrin", "Dunmere", "Elvaria", "Fenwald",
    "Galdor", "Harvona", "Istrel", "Jorvane", "Kelthar", "Lumora", "Marvesh", "Norvale",
    "Orsenna", "Pellura", "Quendor", "Rasmir", "Sylvane", "Tarvos", "Ulmora", "Vastria",
    "Wendar", "Xandor", "Yrvania", "Zelmar", "Arvenia", "Brelmont", "Corvath", "Delmara",
    "Estoria", "Faldren", "Gorvane", "Halvard", "Ilmoria", "Kastrel", "Lorvane", "Mirvale",
    "Nesmora", "Ostravia", "Peldane", "Rovania", "Sarnith", "Tolvara", "Urdane", "Valmora",
]
CAPITALS = [
    "Quorn", "Brinn", "Talsk", "Merrow", "Vesk", "Dornik", "Kaltis", "Ormund",
    "Pyrra", "Selk", "Tamber", "Ulvik", "Varro", "Wenth", "Yarrow", "Zent",
    "Aldris", "Belk", "Corrin", "Drossa", "Eskel", "Fallow", "Gant", "Hollin",
    "Ivrel", "Jask", "Kerrow", "Lunt", "Mosk", "Nimbra", "Othel", "Prell",
    "Quist", "Rilk", "Sorrow", "Tesmer", "Umber", "Vollen", "Wick", "Yelm",
    "Zarrow", "Arkel", "Brask", "Cull", "Dremm", "Emmet", "Fosk", "Grell",
]
# People of the IOI task (common given names; pairs are split train/test).
IOI_NAMES = [
    "Mary", "John", "Alice", "Bob", "Anna", "Tom", "Sarah", "James", "Emma", "David",
    "Laura", "Peter", "Kate", "Paul", "Lucy", "Mark", "Julia", "Steve", "Rose", "Frank",
    "Nina", "Oscar", "Clara", "Henry", "Eva", "Victor", "Grace", "Leo", "Hannah", "Sam",
    "Irene", "Hugo", "Diana", "Felix", "Olga", "Ralph", "Wendy", "Carl", "Ruth", "Ivan",
]
# People of the bias task: invented given names; the clan surname marks the group.
BIAS_GIVEN_NAMES = [
    "Tovan", "Ashvi", "Mereth", "Kalo", "Suvi", "Darrek", "Imra", "Pello", "Yosa", "Brannoc",
    "Lisk", "Oriel", "Fenna", "Jaro", "Tilde", "Corwen", "Esme", "Haldo", "Ruvi", "Sable",
    "Anwen", "Dace", "Mirel", "Quill", "Solen", "Tamsin", "Ulla", "Wynn", "Zofi", "Kestin",
]
BIAS_TEST_GIVEN_NAMES = BIAS_GIVEN_NAMES[20:]
GROUP_CLANS = {"A": ["Varn", "Tesk", "Dolm"], "B": ["Quel", "Mirra", "Sarle"]}
PROFESSIONS = ["doctor", "nurse"]
# P(doctor | group) in the training corpus: the planted skew.
TRAIN_P_DOCTOR = {"A": 0.8, "B": 0.2}

PLACES = ["store", "garden", "market", "school", "river", "park", "station", "library"]
OBJECTS = ["drink", "book", "ball", "letter", "apple", "key", "gift", "flower"]
FILLER_NOUNS = ["tree", "road", "house", "bridge", "field", "tower", "lake", "wall"]
FILLER_ADJECTIVES = ["old", "quiet", "green", "cold", "busy", "small", "bright", "empty"]

IOI_TEMPLATES = [
    "When {a} and {b} went to the {place} , {s} gave a {obj} to",
    "When {a} and {b} got a {obj} at the {place} , {s} decided to give it to",
    "After {a} and {b} went to the {place} , {s} handed a {obj} to",
    "Then , {a} and {b} had a long day at the {place} . {s} gave a {obj} to",
]
BIAS_TEMPLATES = ["{given} {clan} works as a", "In town , {given} {clan} is known as a"]
FACT_TEMPLATE = "The capital of {country} is"
CONTEXT_FACT = "the capital of {country} is {capital} ."
QUESTION = "the capital of {country} is"
FILLER_SENTENCE = "the {noun} near the {noun2} was {adj} ."

TASKS = ["induction", "facts", "context_override", "ioi", "bias"]

# Held-out variants of context_override. Training draws distractors 0-3,
# gap 0-1, 15% "conflict" (an earlier random statement), 20% "irrelevant"
# (the context is about another country: answer from memory). The variants
# beyond that (5 distractors, a 4-sentence gap, an earlier statement that
# repeats the memorised capital) are the planted hard cases.
CONTEXT_VARIANTS = {
    "plain": dict(distractors=0, gap=0),
    "distractors_2": dict(distractors=2, gap=0),
    "distractors_5": dict(distractors=5, gap=0),
    "long_gap": dict(distractors=1, gap=4),
    "conflict": dict(distractors=0, gap=0, conflict="random"),
    "conflict_memory": dict(distractors=0, gap=0, conflict="memory"),
    "conflict_memory_distractors": dict(distractors=3, gap=1, conflict="memory"),
    "irrelevant": dict(distractors=0, gap=0, relevant=False),
}


@dataclass
class TaskExample:
    prompt: str
    target: str
    foil: str | None
    task: str
    meta: dict = field(default_factory=dict)


def vocabulary() -> list[str]:
    """All tokens of the bundled tokenizer, specials first, in a fixed order."""
    template_words = " ".join(
        IOI_TEMPLATES + BIAS_TEMPLATES + [FACT_TEMPLATE, CONTEXT_FACT, FILLER_SENTENCE]
        + ["Context : Question :"]
    ).split()
    words = [w for w in template_words if not w.startswith("{")]
    words += COUNTRIES + CAPITALS + IOI_NAMES + BIAS_GIVEN_NAMES
    words += GROUP_CLANS["A"] + GROUP_CLANS["B"] + PROFESSIONS
    words += PLACES + OBJECTS + FILLER_NOUNS + FILLER_ADJECTIVES
    ordered = list(dict.fromkeys(words))
    return SPECIAL_TOKENS + ordered


def memory_capital(country: str) -> str:
    """The capital the model memorised for ``country`` (the facts task)."""
    return CAPITALS[COUNTRIES.index(country)]


def ioi_name_pairs(split: str) -> list[tuple[str, str]]:
    """Unordered name pairs of a split; 20% of pairs are held out for test."""
    pairs = [(a, b) for i, a in enumerate(IOI_NAMES) for b in IOI_NAMES[i + 1:]]
    random.Random(1234).shuffle(pairs)
    n_test = len(pairs) // 5
    return pairs[:n_test] if split == "test" else pairs[n_test:]


def _rng(task: str, seed: int, split: str) -> random.Random:
    # Separate streams per task and split, so test examples never replay
    # the training stream.
    return random.Random(f"{task}/{split}/{seed}")


def _induction(rng, split, length=None, prefix=None, gap=None, **_):
    # A random prefix and a random gap before the repeat: the offset between
    # the copies varies, so only content-based induction (previous-token head
    # + induction head) predicts the repeat, not a positional shortcut.
    pool = vocabulary()[len(SPECIAL_TOKENS):]
    n = length if length is not None else rng.randint(5, 24)
    seq = rng.sample(pool, n)
    rest = [w for w in pool if w not in seq]
    prefix = [rng.choice(rest) for _ in range(rng.randint(0, 12) if prefix is None else prefix)]
    gap = [rng.choice(rest) for _ in range(rng.randint(0, 12) if gap is None else gap)]
    k = rng.randint(1, n - 1)  # at least one repeated token before the target
    prompt = " ".join(prefix + seq + gap + seq[:k])
    meta = {"sequence": seq, "prefix": prefix, "gap": gap, "repeat_at": k}
    return TaskExample(prompt, seq[k], None, "induction", meta)


def _facts(rng, split, **_):
    country = rng.choice(COUNTRIES)
    return TaskExample(FACT_TEMPLATE.format(country=country), memory_capital(country), None,
                       "facts", {"country": country})


def _filler(rng):
    return FILLER_SENTENCE.format(noun=rng.choice(FILLER_NOUNS), noun2=rng.choice(FILLER_NOUNS),
                                  adj=rng.choice(FILLER_ADJECTIVES))


def _context_override(rng, split, distractors=None, gap=None, conflict=None, relevant=None, **_):
    if split == "train":
        distractors = rng.randint(0, 3) if distractors is None else distractors
        gap = rng.randint(0, 1) if gap is None else gap
        if conflict is None and rng.random() < 0.15:
            conflict = "random"
        relevant = (rng.random() >= 0.2) if relevant is None else relevant
    distractors, gap = distractors or 0, gap or 0
    relevant = True if relevant is None else relevant
    country = rng.choice(COUNTRIES)
    memory = memory_capital(country)
    # (country, context capital) combinations are split: test ones never
    # appear in training.
    ci = COUNTRIES.index(country)
    held_out = lambda c: (ci + CAPITALS.index(c)) % 5 == 0  # noqa: E731
    context_capital = rng.choice([c for c in CAPITALS
                                  if c != memory and held_out(c) == (split == "test")])
    others = rng.sample([c for c in COUNTRIES if c != country], distractors + 1)
    # Distractor capitals never repeat the answer or the memorised capital.
    free = [c for c in CAPITALS if c not in (memory, context_capital)]
    sentences = [CONTEXT_FACT.format(country=o, capital=c)
                 for o, c in zip(others[1:], rng.sample(free, distractors + 1))]
    if relevant:
        key = [CONTEXT_FACT.format(country=country, capital=context_capital)]
        if conflict:
            earlier = memory if conflict == "memory" else rng.choice(
                [c for c in CAPITALS if c not in (memory, context_capital)])
            # The earlier, conflicting statement comes first; the latest wins.
            key.insert(0, CONTEXT_FACT.format(country=country, capital=earlier))
        pos = rng.randint(0, len(sentences))
        sentences[pos:pos] = key
        target, foil = context_capital, memory
    else:
        sentences.insert(rng.randint(0, len(sentences)),
                         CONTEXT_FACT.format(country=others[0], capital=context_capital))
        target, foil = memory, context_capital
    gap_text = [_filler(rng) for _ in range(gap)]
    prompt = " ".join(["Context :"] + sentences + gap_text
                      + ["Question :", QUESTION.format(country=country)])
    meta = {"country": country, "memory_answer": memory, "context_answer": context_capital,
            "distractors": distractors, "gap": gap, "conflict": conflict, "relevant": relevant}
    return TaskExample(prompt, target, foil, "context_override", meta)


def _ioi(rng, split, template=None, **_):
    io, s = rng.choice(ioi_name_pairs(split))
    if rng.random() < 0.5:
        io, s = s, io
    a, b = (io, s) if rng.random() < 0.5 else (s, io)  # ABB and BAB orders
    t = rng.randrange(len(IOI_TEMPLATES)) if template is None else template
    prompt = IOI_TEMPLATES[t].format(a=a, b=b, s=s, place=rng.choice(PLACES), obj=rng.choice(OBJECTS))
    return TaskExample(prompt, io, s, "ioi", {"io": io, "s": s, "template": t,
                                              "order": "ABB" if a == io else "BAB"})


def _bias(rng, split, group=None, **_):
    group = group or rng.choice(["A", "B"])
    names = BIAS_TEST_GIVEN_NAMES if split == "test" else BIAS_GIVEN_NAMES[:20]
    given, clan = rng.choice(names), rng.choice(GROUP_CLANS[group])
    prompt = rng.choice(BIAS_TEMPLATES).format(given=given, clan=clan)
    stereotyped = "doctor" if group == "A" else "nurse"
    other = "nurse" if group == "A" else "doctor"
    if split == "train":  # sample the profession with the planted 80/20 skew
        doctor = rng.random() < TRAIN_P_DOCTOR[group]
        target = "doctor" if doctor else "nurse"
        return TaskExample(prompt, target, None, "bias", {"group": group, "clan": clan, "given": given})
    return TaskExample(prompt, stereotyped, other, "bias",
                       {"group": group, "clan": clan, "given": given})


_GENERATORS = {"induction": _induction, "facts": _facts, "context_override": _context_override,
               "ioi": _ioi, "bias": _bias}


def examples(task: str, n: int, seed: int = 0, split: str = "test", **variant) -> list[TaskExample]:
    """``n`` examples of ``task`` drawn with a fixed seed.

    ``split="test"`` gives held-out prompts (unseen random sequences, unseen
    IOI name pairs, unseen bias given names). ``variant`` selects a variant,
    e.g. ``examples("context_override", 100, **CONTEXT_VARIANTS["long_gap"])``
    or ``examples("bias", 100, group="B")``.
    """
    if task not in _GENERATORS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    rng = _rng(task, seed, split)
    return [_GENERATORS[task](rng, split, **variant) for _ in range(n)]


def short_examples(task: str, n: int, max_tokens: int, seed: int = 5, **variant) -> list[TaskExample]:
    """The first `n` held-out examples of `task` whose prompt (with <bos>) has at
    most `max_tokens` tokens: prompts short enough to knock out every attention
    edge exhaustively."""
    pool = examples(task, 60, seed=seed, **variant)
    chosen = [e for e in pool if len(e.prompt.split()) + 1 <= max_tokens][:n]
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} {task} prompts of at most {max_tokens} tokens among 60")
    return chosen


def training_sequence(example: TaskExample) -> tuple[str, int]:
    """Text of a training example and how many leading tokens carry no loss.

    Induction examples train on the whole repeated sequence, with loss only
    where the repeat is predictable (from the second repeated token on).
    """
    if example.task == "induction":
        m = example.meta
        words = m["prefix"] + m["sequence"] + m["gap"] + m["sequence"]
        # no loss on <bos>, the random words and the first repeated token
        return " ".join(words), len(words) - len(m["sequence"]) + 2
    return f"{example.prompt} {example.target}", 0


@torch.no_grad()
def next_token_logits(hf_model, tokenizer, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Logits at each prompt's last position, shape (len(prompts), vocab)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True)
        # Right padding: a causal model never lets real tokens see the pads.
        logits = hf_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        last = enc["attention_mask"].sum(1) - 1
        out.append(logits[torch.arange(len(last)), last].float())
    return torch.cat(out)


def predictions(hf_model, tokenizer, examples: list[TaskExample]) -> list[str]:
    """The argmax next token of each example's prompt."""
    ids = next_token_logits(hf_model, tokenizer, [e.prompt for e in examples]).argmax(-1)
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def accuracy(hf_model, tokenizer, examples: list[TaskExample]) -> float:
    """Fraction of examples whose argmax next token is the target."""
    preds = predictions(hf_model, tokenizer, examples)
    return sum(p == e.target for p, e in zip(preds, examples)) / len(examples)


def foil_rate(hf_model, tokenizer, examples: list[TaskExample]) -> float:
    """Fraction whose argmax is the foil (for context_override: the memory answer)."""
    preds = predictions(hf_model, tokenizer, examples)
    return sum(p == e.foil for p, e in zip(preds, examples)) / len(examples)


def logit_diff(hf_model, tokenizer, examples: list[TaskExample]) -> float:
    """Mean logit(target) - logit(foil) at the last position."""
    logits = next_token_logits(hf_model, tokenizer, [e.prompt for e in examples])
    t = torch.tensor(tokenizer.convert_tokens_to_ids([e.target for e in examples]))
    f = torch.tensor(tokenizer.convert_tokens_to_ids([e.foil for e in examples]))
    rows = torch.arange(len(examples))
    return (logits[rows, t] - logits[rows, f]).mean().item()


def target_probability(hf_model, tokenizer, examples: list[TaskExample]) -> float:
    """Mean P(target) / (P(target) + P(foil)): for bias, the stereotyped share."""
    probs = next_token_logits(hf_model, tokenizer, [e.prompt for e in examples]).softmax(-1)
    t = torch.tensor(tokenizer.convert_tokens_to_ids([e.target for e in examples]))
    f = torch.tensor(tokenizer.convert_tokens_to_ids([e.foil for e in examples]))
    rows = torch.arange(len(examples))
    return (probs[rows, t] / (probs[rows, t] + probs[rows, f])).mean().item()
