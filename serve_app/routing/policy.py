"""Which replica takes a request, in pure code (no Ray): the ROUTING_POLICY decisions.

`prefix` keeps, per replica, an approximate index of the prompts it has been sent: each
prompt's text cut into blocks of BLOCK_CHARS characters, each block named by a hash chained
over every block before it (as vLLM names its KV-cache blocks by their tokens), held in an LRU
of twice the replica's KV-cache size, so blocks age out in the order its cache would evict them. A
request goes to the replica holding the longest run of its leading blocks, unless that
replica has more than `max_imbalance` requests more than the least-loaded one; without a
match, to the least-loaded replica. An explicit affinity key (OpenAI's `prompt_cache_key`,
`user`, a session header) names its replica by rendezvous hashing, within the same bound.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

PolicyName = Literal["prefix", "least_loaded", "round_robin"]
POLICIES: tuple[PolicyName, ...] = ("prefix", "least_loaded", "round_robin")
Reason = Literal[
    "affinity", "matched", "load", "no_match", "no_prompt", "least_loaded", "round_robin"
]  # fmt: skip
REASONS: tuple[Reason, ...] = (
    "affinity", "matched", "load", "no_match", "no_prompt", "least_loaded", "round_robin"
)  # fmt: skip

BLOCK_CHARS = 128  # about 32 tokens: fine enough to tell conversations apart, cheap to hash
CHARS_PER_TOKEN = 4  # to size a replica's index from its KV cache's tokens (English text)
# An index that forgets a prefix its replica still holds sends the prefix elsewhere (a miss
# there, and a second copy); one that remembers a prefix its replica evicted costs one miss
# where the prefix was, which then holds it again. So it remembers twice what the cache holds
# (text of more characters per token, such as code or random tokens, fits too).
REMEMBER = 2
DEFAULT_CACHE_TOKENS = 65536  # until a replica reports its KV cache's size
MIN_MATCH_RATIO = 0.1  # a shorter match (a shared greeting) is not worth a busier replica


def routing_text(body: Mapping[str, Any]) -> str | None:
    """The text a request's prompt starts with, as the chat template would order it: tools,
    then system, then each message (role and content); or the prompt or the Responses input.
    None when the body carries no prompt (nothing to match)."""
    parts: list[str] = []
    if body.get("tools"):
        parts.append(_dump(body["tools"]))
    for key in ("system", "instructions"):  # Anthropic's system, Responses' instructions
        if body.get(key):
            parts.append(_text(body[key]))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                parts.append(f"<{message.get('role', '')}>")
                parts.append(_text(message.get("content")))
                if message.get("tool_calls"):
                    parts.append(_dump(message["tool_calls"]))
    elif "prompt" in body:
        prompt = body["prompt"]
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompt = prompt[0]  # several prompts: the first one's replica takes them all
        parts.append(_text(prompt))
    elif "input" in body:
        parts.append(_text(body["input"]))
    text = "".join(parts)
    return text or None


def affinity_key(body: Mapping[str, Any], session: str | None = None) -> str | None:
    """The client's explicit affinity: a session header, OpenAI's `prompt_cache_key` or
    `user`, Anthropic's `metadata.user_id`."""
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    for key in (session, body.get("prompt_cache_key"), body.get("user"), user_id):
        if isinstance(key, str) and key:
            return key
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):
            return " ".join(map(str, value))  # token ids
        return "".join(_text(item) for item in value)
    if isinstance(value, Mapping):  # a content part or a Responses input item
        for key in ("text", "content", "input_text", "output"):
            if key in value:
                return _text(value[key])
        return _dump(value)
    return str(value)


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def block_hashes(text: str | None) -> list[int]:
    """Chained hashes of the text's whole blocks: block i's names blocks 0..i (a partial last
    block is left out, as vLLM leaves out a partial KV block)."""
    if not text:
        return []
    data = text.encode("utf-8", "surrogatepass")
    hashes: list[int] = []
    parent = b""
    for start in range(0, len(data) - BLOCK_CHARS + 1, BLOCK_CHARS):
        parent = hashlib.blake2b(parent + data[start : start + BLOCK_CHARS], digest_size=8).digest()
        hashes.append(int.from_bytes(parent, "little"))
    return hashes


class PrefixIndex:
    """What each replica has been sent: an LRU of block hashes per replica, bounded by each
    replica's capacity (in blocks)."""

    def __init__(self) -> None:
        self._blocks: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}

    def set_replicas(self, replicas: Iterable[str]) -> None:
        """Replicas that started enter (empty), those that stopped leave with their blocks."""
        replicas = set(replicas)
        for gone in set(self._blocks) - replicas:
            del self._blocks[gone]
            self._capacity.pop(gone, None)
        for new in replicas - set(self._blocks):
            self._blocks[new] = OrderedDict()

    def set_capacity(self, replica: str, cache_tokens: int) -> None:
        self._capacity[replica] = max(1, cache_tokens * CHARS_PER_TOKEN * REMEMBER // BLOCK_CHARS)
        self._evict(replica)

    def capacity(self, replica: str) -> int:
        default = DEFAULT_CACHE_TOKENS * CHARS_PER_TOKEN * REMEMBER // BLOCK_CHARS
        return self._capacity.get(replica, default)

    def matched(self, hashes: Sequence[int], replica: str) -> int:
        """How many of the leading blocks `replica` holds."""
        blocks = self._blocks.get(replica)
        if not blocks:
            return 0
        count = 0
        for block in hashes:
            if block not in blocks:
                break
            count += 1
        return count

    def record(self, hashes: Sequence[int], replica: str) -> None:
        """`replica` was sent these blocks: they are its most recently used."""
        blocks = self._blocks.setdefault(replica, OrderedDict())
        for block in hashes:
            blocks[block] = None
            blocks.move_to_end(block)
        self._evict(replica)

    def size(self, replica: str) -> int:
        return len(self._blocks.get(replica, ()))

    def _evict(self, replica: str) -> None:
        blocks = self._blocks.get(replica)
        if blocks is None:
            return
        for _ in range(len(blocks) - self.capacity(replica)):
            blocks.popitem(last=False)


@dataclass(frozen=True)
class Decision:
    replica: str
    reason: Reason
    matched_chars: int = 0


class Policy:
    """One caller's routing state: the prefix index, and a counter for round robin."""

    def __init__(self, name: PolicyName = "prefix", max_imbalance: int = 4) -> None:
        if name not in POLICIES:
            raise ValueError(f"unknown routing policy {name!r}: one of {', '.join(POLICIES)}")
        self.name = name
        self.max_imbalance = max_imbalance
        self.index = PrefixIndex()
        self._turn = 0

    def choose(
        self,
        replicas: Sequence[str],
        loads: Mapping[str, int],
        text: str | None = None,
        affinity: str | None = None,
    ) -> Decision:
        """The replica (of `replicas`, not empty) to take a request; `loads` are their
        running and queued requests (a missing one counts as 0). The prompt is recorded as
        sent to it."""
        blocks = self.blocks(text)
        decision = self.decide(replicas, loads, blocks, affinity)
        self.record(blocks, decision.replica)
        return decision

    def blocks(self, text: str | None) -> list[int] | None:
        """What `decide` and `record` match of a prompt, computed once per request: its block
        hashes under `prefix` (none for the other policies); None without a prompt."""
        if text is None:
            return None
        return block_hashes(text) if self.name == "prefix" else []

    def record(self, blocks: Sequence[int] | None, replica: str) -> None:
        """A prompt of these `blocks` was sent to `replica` (its cache now holds it)."""
        if blocks:
            self.index.record(blocks, replica)

    def decide(
        self,
        replicas: Sequence[str],
        loads: Mapping[str, int],
        blocks: Sequence[int] | None = None,
        affinity: str | None = None,
    ) -> Decision:
        """`choose` without recording the prompt, given its `blocks`."""
        if not replicas:
            raise ValueError("no replica to route to")
        replicas = sorted(replicas)
        if self.name == "round_robin":
            self._turn += 1
            return Decision(replicas[self._turn % len(replicas)], "round_robin")
        if self.name == "least_loaded":
            return Decision(self._least_loaded(replicas, loads), "least_loaded")
        if blocks is None and affinity is None:  # not a generation (stats, health, models)
            return Decision(self._least_loaded(replicas, loads), "no_prompt")
        return self._prefix(replicas, loads, blocks or [], affinity)

    def _prefix(
        self,
        replicas: list[str],
        loads: Mapping[str, int],
        hashes: Sequence[int],
        affinity: str | None,
    ) -> Decision:
        least = self._least_loaded(replicas, loads)
        floor = loads.get(least, 0)
        if affinity is not None:
            pinned = max(replicas, key=lambda r: _rendezvous(affinity, r))
            if loads.get(pinned, 0) - floor > self.max_imbalance:
                return Decision(least, "load")
            return Decision(pinned, "affinity", self.index.matched(hashes, pinned) * BLOCK_CHARS)
        matches = {r: self.index.matched(hashes, r) for r in replicas}
        best = max(matches.values(), default=0)
        if best == 0 or best < MIN_MATCH_RATIO * len(hashes):
            return Decision(least, "no_match")
        holders = [r for r in replicas if matches[r] == best]
        chosen = self._least_loaded(holders, loads)
        if loads.get(chosen, 0) - floor > self.max_imbalance:
            return Decision(least, "load", matches[least] * BLOCK_CHARS)
        return Decision(chosen, "matched", best * BLOCK_CHARS)

    def _least_loaded(self, replicas: list[str], loads: Mapping[str, int]) -> str:
        """The least-loaded replica; ties taken in turn, so an idle deployment spreads."""
        floor = min(loads.get(r, 0) for r in replicas)
        tied = [r for r in replicas if loads.get(r, 0) == floor]
        self._turn += 1
        return tied[self._turn % len(tied)]


def _rendezvous(key: str, replica: str) -> int:
    """Highest-random-weight hashing: a key keeps its replica while that replica lives, and
    only the keys of a replica that leaves move."""
    digest = hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
