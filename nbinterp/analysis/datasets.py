"""Data sets of prompts: rows of (prompt, target, foil, group, counterfactual partner).

A claim about a model's behaviour ("it prefers doctor for group A") is a
claim about a population of prompts, so the analyses over data sets (`ni.bias`)
take a `PromptSet`. Three ways to build one:

    PromptSet.from_lists({"A": [...], "B": [...]}, target=" doctor", foil=" nurse")
    PromptSet.from_templates(["{given} {clan} works as a"], attribute="clan",
                             groups={"A": ["Varn"], "B": ["Quel"]}, fillers={"given": ["Anwen", "Dace"]},
                             target=" doctor", foil=" nurse")
    PromptSet.from_dataframe(frame)      # columns prompt, target, foil, group (pandas)

Templates x fillers give counterfactual pairs: rows that differ only in the
attribute (the i-th word of each group's list), partners of each other. The
text alone says nothing about tokens, so `check(model)` tokenizes every row
against the model and refuses, naming the row, unknown words, a target or
foil that is not one token, and partners of different token lengths (a pair
must line up position by position to be a counterfactual).
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from nbinterp.errors import NbinterpError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    target: str | int
    foil: str | int | None
    group: str
    partner: int | None = None  # index of the counterfactual row (same text but the attribute)


@dataclass
class TokenizedSet:
    """A `PromptSet` checked against one model: token ids and metric tokens per row."""

    prompts: "PromptSet"
    input_ids: list[torch.Tensor]  # 1-D token ids per row
    targets: list[int]
    foils: list[int | None]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def groups(self) -> list[str]:
        return [row.group for row in self.prompts.rows]


class PromptSet:
    """Rows of prompts with a group label each; see the module docstring."""

    def __init__(self, rows: Sequence[PromptRow]) -> None:
        self.rows = list(rows)
        if not self.rows:
            raise NbinterpError("a prompt set needs at least one row")
        for index, row in enumerate(self.rows):
            _check_row(row, index, len(self.rows))
            if row.partner is not None and self.rows[row.partner].partner != index:
                raise NbinterpError(f"row {index} names row {row.partner} as its partner but not the other way round: "
                                    "pairs must point at each other")

    # ------------------------------------------------------------- builders
    @classmethod
    def from_lists(cls, prompts: Mapping[str, Sequence[str]], *, target: str | int,
                   foil: str | int | None = None) -> "PromptSet":
        """{group: [prompt, ...]}: every row with the same target and foil."""
        if not isinstance(prompts, Mapping) or not prompts:
            raise NbinterpError('prompts is a dict of groups, e.g. {"A": ["Anwen Varn works as a"], "B": [...]}')
        rows = []
        for group, texts in prompts.items():
            if isinstance(texts, str) or not isinstance(texts, Sequence):
                raise NbinterpError(f"group {group!r} must be a list of prompts, not {type(texts).__name__}")
            if not texts:
                raise NbinterpError(f"group {group!r} is empty: give it at least one prompt")
            rows += [PromptRow(text, target, foil, str(group)) for text in texts]
        return cls(rows)

    @classmethod
    def from_templates(
        cls, templates: Sequence[str], *, attribute: str, groups: Mapping[str, Sequence[str]],
        fillers: Mapping[str, Sequence[str]] | None = None, target: str | int, foil: str | int | None = None,
    ) -> "PromptSet":
        """Every template x every combination of `fillers` x the i-th value of each
        group's list for `{attribute}`. With two groups, the rows that differ only in
        the attribute are counterfactual partners (so both lists have one length)."""
        if isinstance(templates, str):
            templates = [templates]
        fillers = dict(fillers or {})
        if not templates:
            raise NbinterpError("templates is an empty list: give at least one, e.g. ['{given} {clan} works as a']")
        if not isinstance(groups, Mapping) or not groups:
            raise NbinterpError(f'groups is a dict of the values of {{{attribute}}} per group, e.g. {{"A": ["Varn"], "B": ["Quel"]}}')
        for group, values in groups.items():
            if isinstance(values, str) or not values:
                raise NbinterpError(f"group {group!r} needs a non-empty list of values for {{{attribute}}}")
        lengths = {len(values) for values in groups.values()}
        paired = len(groups) == 2
        if paired and len(lengths) != 1:
            raise NbinterpError(
                "with two groups the i-th values form counterfactual pairs, so both lists need one length; got "
                + ", ".join(f"{g!r}: {len(v)}" for g, v in groups.items())
            )
        for name, values in fillers.items():
            if isinstance(values, str) or not values:
                raise NbinterpError(f"filler {{{name}}} needs a non-empty list of values")
        for template in templates:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            if attribute not in fields:
                raise NbinterpError(f"template {template!r} has no {{{attribute}}} field to fill with the groups' values")
            missing = fields - {attribute} - set(fillers)
            if missing:
                raise NbinterpError(f"template {template!r} has fields {sorted(missing)} that fillers= does not fill")
        rows: list[PromptRow] = []
        names = list(fillers)
        for template in templates:
            for combination in itertools.product(*(fillers[n] for n in names)):
                values = dict(zip(names, combination))
                for i in range(max(lengths)):
                    start = len(rows)
                    for group, choices in groups.items():
                        if i < len(choices):
                            text = template.format(**values, **{attribute: choices[i]})
                            rows.append(PromptRow(text, target, foil, str(group)))
                    if paired:
                        rows[start] = replace(rows[start], partner=start + 1)
                        rows[start + 1] = replace(rows[start + 1], partner=start)
        return cls(rows)

    @classmethod
    def from_dataframe(cls, frame: Any, *, prompt: str = "prompt", target: str = "target", foil: str | None = "foil",
                       group: str = "group", partner: str | None = None) -> "PromptSet":
        """One row per DataFrame row; `foil` and `partner` columns are optional
        (a missing value, NaN or None, means none)."""
        try:
            import pandas as pd
        except ImportError:
            raise NbinterpError("PromptSet.from_dataframe needs pandas: pip install pandas "
                                "(or build the set with PromptSet.from_lists / from_templates)") from None
        if not isinstance(frame, pd.DataFrame):
            raise NbinterpError(f"from_dataframe takes a pandas DataFrame, not {type(frame).__name__}")
        wanted = [c for c in (prompt, target, group) if c not in frame.columns]
        if wanted:
            raise NbinterpError(f"the DataFrame has no column(s) {wanted}; its columns are {list(frame.columns)}")
        has_foil = foil is not None and foil in frame.columns
        if partner is not None and partner not in frame.columns:
            raise NbinterpError(f"the DataFrame has no partner column {partner!r}")

        def value(record: Any, column: str | None) -> Any:
            if column is None:
                return None
            item = record[column]
            return None if item is None or (isinstance(item, float) and item != item) else item

        rows = []
        for index, (_, record) in enumerate(frame.iterrows()):
            pair = value(record, partner)
            rows.append(PromptRow(
                value(record, prompt), value(record, target), value(record, foil) if has_foil else None,
                str(value(record, group)), None if pair is None else _row_index(pair, index, len(frame)),
            ))
        return cls(rows)

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> PromptRow:
        return self.rows[index]

    @property
    def groups(self) -> list[str]:
        """The group names in order of first appearance."""
        return list(dict.fromkeys(row.group for row in self.rows))

    @property
    def paired(self) -> bool:
        """True when every row has a counterfactual partner."""
        return all(row.partner is not None for row in self.rows)

    def __repr__(self) -> str:
        counts = ", ".join(f"{g}: {sum(r.group == g for r in self.rows)}" for g in self.groups)
        return f"<PromptSet {len(self)} rows ({counts}){' in counterfactual pairs' if self.paired else ''}>"

    # ----------------------------------------------------------------- check
    def check(self, model: "Model") -> TokenizedSet:
        """Tokenize every row with `model`; an error names the first bad row."""
        input_ids, targets, foils = [], [], []
        for index, row in enumerate(self.rows):
            try:
                input_ids.append(model.tokenize(row.prompt)[0])
                targets.append(model.token_id(row.target))
                foils.append(None if row.foil is None else model.token_id(row.foil))
            except NbinterpError as exc:
                raise NbinterpError(f"row {index} (group {row.group!r}, {row.prompt!r}): {exc}") from None
        for index, row in enumerate(self.rows):
            if row.partner is not None and row.partner > index:
                mine, theirs = input_ids[index], input_ids[row.partner]
                if len(mine) != len(theirs):
                    split = model.tokenizer.convert_ids_to_tokens
                    raise NbinterpError(
                        f"rows {index} and {row.partner} are counterfactual partners but have {len(mine)} and "
                        f"{len(theirs)} tokens ({split(mine.tolist())} vs {split(theirs.tolist())}): pick attribute "
                        "values of the same token length so the pair lines up position by position"
                    )
        return TokenizedSet(self, input_ids, targets, foils)

    def subset(self, indices: Sequence[int]) -> "PromptSet":
        """The rows at `indices`, partners kept only where both rows are in."""
        kept = {old: new for new, old in enumerate(indices)}
        return PromptSet([replace(self.rows[old], partner=kept.get(self.rows[old].partner))  # type: ignore[arg-type]
                          for old in indices])


def as_prompt_set(data: Any = None, *, prompts: Any = None, target: Any = None, foil: Any = None) -> PromptSet:
    """A call's data set: a PromptSet as it is (its rows' targets replaced when
    target=/foil= are given), or {group: [prompt, ...]} with target/foil."""
    if data is not None and prompts is not None:
        raise NbinterpError("pass either a data set or prompts={group: [...]}, not both")
    source = data if data is not None else prompts
    if source is None:
        raise NbinterpError('pass a data set (nbinterp.analysis.datasets.PromptSet) or prompts={"A": [...], "B": [...]}')
    if isinstance(source, PromptSet):
        if target is None and foil is None:
            return source
        return PromptSet([replace(row, target=row.target if target is None else target,
                                  foil=row.foil if foil is None else foil) for row in source.rows])
    if isinstance(source, Mapping):
        if target is None:
            raise NbinterpError('prompts={group: [...]} needs target= (and usually foil=), e.g. target=" doctor", foil=" nurse"')
        return PromptSet.from_lists(source, target=target, foil=foil)
    if type(source).__name__ == "DataFrame":
        prompt_set = PromptSet.from_dataframe(source)
        return as_prompt_set(prompt_set, target=target, foil=foil)
    raise NbinterpError(f"a data set is a PromptSet, a pandas DataFrame or a dict of groups, not {type(source).__name__}")


def _check_row(row: PromptRow, index: int, n_rows: int) -> None:
    where = f"row {index} (group {row.group!r}, {row.prompt!r})"
    if not isinstance(row.prompt, str) or not row.prompt.strip():
        raise NbinterpError(f"{where}: the prompt must be non-empty text")
    if row.target is None or (isinstance(row.target, str) and not row.target):
        raise NbinterpError(f"{where}: the row has no target token")
    if not row.group or row.group == "None":
        raise NbinterpError(f"{where}: the row has no group label")
    if row.partner is not None:
        _row_index(row.partner, index, n_rows)
        if row.partner == index:
            raise NbinterpError(f"{where}: a row cannot be its own counterfactual partner")


def _row_index(value: Any, index: int, n_rows: int) -> int:
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise NbinterpError(f"row {index}: partner {value!r} is not a row number") from None
    if as_int != value or not 0 <= as_int < n_rows:
        raise NbinterpError(f"row {index}: partner {value!r} is not a row number in 0..{n_rows - 1}")
    return as_int
