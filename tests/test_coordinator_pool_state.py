"""The pool owns its state: agents linked to their connections, the running total of the
reported figures, and the services each connection hosts."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pmrun.coordinator import protocol as p
from pmrun.coordinator.pool import AgentEntry, Pool

MIB = 1 << 20


class Conn:
    """What the pool touches of a connection: its agent, its deregistered flag, send()."""

    def __init__(self) -> None:
        self.agent: AgentEntry | None = None
        self.deregistered = True
        self.sent: list[p.Message] = []

    def send(self, msg: p.Message) -> None:
        self.sent.append(msg)


def agent(agent_id: str = "a1", rss: int = 10 * MIB) -> AgentEntry:
    return AgentEntry(
        agent_id=agent_id, name=agent_id, launcher_pid=1, launcher_start=1, child_pid=2,
        uid=0, argv=["x"], max_rss=None, warn_rss=None, priority=0, backend={},
        started=0.0, rss_bytes=rss,
    )  # fmt: skip


def test_an_agent_and_its_connection_know_each_other_while_registered() -> None:
    pool, conn, a = Pool(), Conn(), agent()
    pool.add(a, conn)  # type: ignore[arg-type]
    assert a.conn is conn and conn.agent is a and not conn.deregistered
    assert a.send(p.Stop(reason="pool")) is True
    assert [m.TYPE for m in conn.sent] == ["stop"]
    assert pool.remove(a) is True
    assert a.conn is None and conn.agent is None
    assert a.send(p.Stop(reason="pool")) is False  # nothing leads to its launcher any more
    assert pool.remove(a) is False


def test_removing_a_replaced_entry_leaves_its_successor_alone() -> None:
    pool, old_conn, new_conn = Pool(), Conn(), Conn()
    old, new = agent(rss=10 * MIB), agent(rss=30 * MIB)
    pool.add(old, old_conn)  # type: ignore[arg-type]
    assert pool.remove(old)
    pool.add(new, new_conn)  # type: ignore[arg-type]
    assert pool.remove(old) is False
    assert pool.agents["a1"] is new and new_conn.agent is new
    assert pool.reported_bytes == 30 * MIB


def test_a_report_replaces_figures_and_keeps_the_pids_when_none_come() -> None:
    pool, a = Pool(), agent()
    pool.add(a, Conn())  # type: ignore[arg-type]
    pool.report(a, 20 * MIB, 25 * MIB, [[5, 7]], "running")
    pool.report(a, 21 * MIB, 25 * MIB, [], "stopping")
    assert (a.rss_bytes, a.peak_bytes, a.pids, a.state) == (
        21 * MIB,
        25 * MIB,
        [[5, 7]],
        "stopping",
    )
    assert pool.reported_bytes == 21 * MIB


def test_a_credit_never_takes_an_agent_below_zero_nor_touches_an_unknown_one() -> None:
    pool, a = Pool(), agent(rss=10 * MIB)
    pool.add(a, Conn())  # type: ignore[arg-type]
    pool.credit("a1", 4 * MIB)
    assert a.rss_bytes == 6 * MIB
    pool.credit("a1", 100 * MIB)
    pool.credit("nobody", 1 * MIB)
    pool.credit(None, 1 * MIB)
    pool.credit("a1", -5)  # a service that grew while evicting frees nothing
    assert a.rss_bytes == 0 and pool.reported_bytes == 0


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "report", "credit"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(-MIB, 64 * MIB),
    ),
    max_size=40,
)


@given(OPS)
def test_the_running_total_is_always_the_sum_of_the_reported_figures(ops: Any) -> None:
    pool = Pool()
    entries: dict[str, AgentEntry] = {}
    for op, aid, n in ops:
        current = pool.agents.get(aid)
        if op == "add":
            if current is not None:
                pool.remove(current)
            entries[aid] = agent(aid, max(0, n))
            pool.add(entries[aid], Conn())  # type: ignore[arg-type]
        elif op == "remove" and aid in entries:
            pool.remove(entries[aid])  # maybe an entry removed already
        elif op == "report" and current is not None:
            pool.report(current, max(0, n), max(0, n), [], "running")
        elif op == "credit":
            pool.credit(aid, n)
        assert pool.reported_bytes == pool.rss_total()


def test_services_are_bounded_per_connection_and_go_with_it() -> None:
    pool = Pool()
    assert pool.add_service(1, "cache", 10, "a1", limit=2)
    assert pool.add_service(1, "cache", 10, "a1", limit=2)  # again: replaces, not counted
    assert pool.add_service(1, "index", 10, "a1", limit=2)
    assert not pool.add_service(1, "third", 10, "a1", limit=2)
    assert pool.add_service(2, "third", 11, None, limit=2)  # another connection's own bound
    pool.record_stats(1, {"cache": {"bytes": 5}, "gone": {}, "index": "junk"}, 7 * MIB)
    assert pool.services[(1, "cache")].stats == {"bytes": 5}
    assert pool.services[(1, "index")].stats == {}
    assert pool.services[(1, "cache")].rss_bytes == 7 * MIB
    closed = pool.close_service(1, "index")
    assert closed is not None and closed.name == "index"
    assert pool.close_service(1, "index") is None
    assert [s.name for s in pool.drop_connection(1)] == ["cache"]
    assert list(pool.services) == [(2, "third")]
