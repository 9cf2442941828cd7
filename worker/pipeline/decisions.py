"""Decisions of recently routed texts, reused while nothing that decides them has changed.

Routing is a pure function of the query vector and the router's state: the table snapshot, the
learned head, the thresholds. A text always embeds to the same vector, so a repeated text (same
normalised text, same ``top_n``) gets the decision it got before as long as that state is the same
objects. Any change (a mutation applied, an index rebuilt, a head or thresholds swapped) replaces
one of them, and the memo forgets everything: a reused decision is always exactly the one the
router would make now.
"""

from __future__ import annotations

from cachetools import LRUCache

from worker.routing import Decision, Router

MemoKey = tuple[str, int]
RouterState = tuple[object, ...]


def router_state(router: Router) -> RouterState:
    """The objects a decision depends on, compared by identity."""
    return (router.table.snapshot(), router.head, router.thresholds, router.config)


def same_state(a: RouterState | None, b: RouterState) -> bool:
    """Whether two reads of :func:`router_state` saw the same objects."""
    return a is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class DecisionMemo:
    """An LRU of ``(text, top_n) -> Decision`` for one router state; ``capacity`` 0 disables it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 0)
        self._entries: LRUCache[MemoKey, Decision] = LRUCache(maxsize=max(self.capacity, 1))
        self._state: RouterState | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def use(self, state: RouterState) -> None:
        """Serve decisions made in ``state`` from now on (forgetting the others if it changed)."""
        if not same_state(self._state, state):
            self._entries.clear()
            self._state = state

    def get(self, key: MemoKey) -> Decision | None:
        """The remembered decision, if any."""
        return self._entries.get(key)

    def put(self, key: MemoKey, decision: Decision, state: RouterState) -> None:
        """Remember ``decision``, made in ``state``, if that is the state the memo serves.

        The caller proves which state a decision was made in by reading the router's state before
        and after deciding (:func:`same_state`): every part is replaced by a new object, never
        changed in place or brought back, so when both reads agree the router used that state.
        """
        if self.capacity == 0 or not same_state(self._state, state):
            return
        self._entries[key] = decision
