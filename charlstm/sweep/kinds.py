"""What a trial is. A study runs four kinds, told apart by the flags a trial is queued with
(``names.ATTR_*``, which a retry keeps), and each kind trains, prunes and tags its run its own way::

    kind      queued by                                 budget          pruned   run tags
    SEARCH    the sampler, or the search (seed baseline, a scaling grid cell)
                                                        the trial's     yes      (baseline)
    FINAL     the study once its search is done: the best config again
                                                        the final one   never    final_of
    CHECK     a scaling study's final: the optimum its laws predict
                                                        the final one   never    final_of
    CONFIRM   ``charlstm confirm``: a trial again with a fresh seed
                                                        the trial's     never    confirms, seed
"""

from __future__ import annotations

import enum
from typing import Any

from charlstm import names


class Kind(enum.Enum):
    """A trial's kind (see the module's table)."""

    SEARCH = enum.auto()
    FINAL = enum.auto()
    CHECK = enum.auto()
    CONFIRM = enum.auto()

    @property
    def final_budget(self) -> bool:
        """Trained with the study's ``final`` budget, not the trials'."""
        return self in (Kind.FINAL, Kind.CHECK)

    @property
    def prunable(self) -> bool:
        """The pruner may stop it (a final's longer schedule is behind the others' at the same
        characters; a confirmation's value is what is being measured)."""
        return self is Kind.SEARCH


def kind_of(attrs: dict[str, Any]) -> Kind:
    """The kind of a trial with these user attrs."""
    if attrs.get(names.ATTR_CHECK):
        return Kind.CHECK
    if attrs.get(names.ATTR_FINAL):
        return Kind.FINAL
    if names.ATTR_CONFIRMS in attrs:
        return Kind.CONFIRM
    return Kind.SEARCH


def final_attrs(of: int, check: bool = False) -> dict[str, Any]:
    """The user attrs a final trial (of trial ``of``) is queued with; ``check``: a scaling check."""
    return {names.ATTR_FINAL: True, names.ATTR_FINAL_OF: of, **({names.ATTR_CHECK: True} if check else {})}


def confirm_attrs(confirms: int, seed: int, baseline: bool) -> dict[str, Any]:
    """The user attrs a confirmation's re-run of trial ``confirms`` with ``seed`` is queued with."""
    return {names.ATTR_CONFIRMS: confirms, names.ATTR_SEED: seed, names.ATTR_BASELINE: baseline}


def run_tags(attrs: dict[str, Any]) -> dict[str, str]:
    """What a trial's MLflow run is tagged with besides its study and number: the seed baseline,
    the trial a final trains again, the trial and seed a confirmation re-runs."""
    kind = kind_of(attrs)
    tags = {names.TAG_BASELINE: "true"} if attrs.get(names.ATTR_BASELINE) else {}
    if kind.final_budget:
        tags[names.TAG_FINAL_OF] = str(attrs.get(names.ATTR_FINAL_OF))
    if kind is Kind.CONFIRM:
        tags.update({names.TAG_CONFIRMS: str(attrs[names.ATTR_CONFIRMS]), names.TAG_SEED: str(attrs[names.ATTR_SEED])})
    return tags
