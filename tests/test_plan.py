"""Property tests of the pure planning core (the rechunker habit: one invariant checker)."""
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.publish.plan import PlannedProduct, WritePlan, plan_write, priority_key, select_current

T0 = datetime(2023, 1, 1, 10, 50, tzinfo=timezone.utc)
MAJ = 32631


def _product(day: int, platform: str, tile: str, pb: str = "05.09", gen: int = 0) -> PlannedProduct:
    dt = (T0 + timedelta(days=day), platform)
    epsg = 32631 if tile.startswith("31") else 32632
    chunks = frozenset({(day % 3, int(tile[-1], 36) % 4), (day % 3, 5)})
    return PlannedProduct(
        name=f"{platform}_MSIL2A_{dt[0]:%Y%m%dT%H%M%S}_N{pb.replace('.', '')}_R051_T{tile}_{gen:08d}T000000",
        datatake=dt, tile=tile, epsg=epsg, baseline=pb,
        generation_time=dt[0] + timedelta(hours=gen + 1), chunks=chunks,
    )


products = st.builds(
    _product,
    day=st.integers(0, 12),
    platform=st.sampled_from(["S2A", "S2B"]),
    tile=st.sampled_from(["31UET", "31UFT", "32ULC"]),
    pb=st.sampled_from(["04.00", "05.09"]),
    gen=st.integers(0, 2),
)


def check_invariants(plan: WritePlan, published, incoming) -> None:
    """Everything that must hold for any plan."""
    assert list(plan.axis) == sorted(set(plan.axis)), "time axis sorted and unique"
    assert sorted(plan.old_to_new) == list(range(len(published)))
    new_positions = list(plan.old_to_new.values())
    assert new_positions == sorted(new_positions), "published steps keep their order"
    current, _ = select_current([p for ps in published.values() for p in ps] + list(incoming))
    names = {p.name for p in current}
    for slot in plan.slots:
        assert plan.axis[slot.index] == slot.datatake
        assert all(p.datatake == slot.datatake for p in slot.products)
        assert {p.name for p in slot.products} <= names, "superseded products never contribute"
        keys = [priority_key(p, MAJ) for p in slot.products]
        assert keys == sorted(keys), "products in priority order"
    published_names = {p.name for ps in published.values() for p in ps}
    for p in incoming:
        if p.name in names and p.name not in published_names:
            slot = next(s for s in plan.slots if s.datatake == p.datatake)
            assert p.chunks <= slot.chunks, "every new product's chunks are recomputed"


def _replay(batches) -> dict:
    """Publish batches one after another; return the final datatake -> product names."""
    published: dict = {}
    for batch in batches:
        plan = plan_write(published, batch, MAJ)
        check_invariants(plan, published, batch)
        new: dict = {}
        old_keys = sorted(published)
        for o, n in plan.old_to_new.items():
            new[plan.axis[n]] = published[old_keys[o]]
        for slot in plan.slots:
            new[slot.datatake] = list(slot.products)
        published = new
    return {k: sorted(p.name for p in v) for k, v in published.items()}


@settings(max_examples=200, deadline=None)
@given(st.lists(products, max_size=12), st.randoms())
def test_result_independent_of_arrival_order(items, rnd):
    all_at_once = _replay([items])
    shuffled = list(items)
    rnd.shuffle(shuffled)
    one_by_one = _replay([[p] for p in shuffled])
    assert one_by_one == all_at_once


@settings(max_examples=100, deadline=None)
@given(st.lists(products, max_size=10))
def test_rerun_plans_nothing(items):
    published: dict = {}
    plan = plan_write(published, items, MAJ)
    for slot in plan.slots:
        published[slot.datatake] = list(slot.products)
    again = plan_write(published, items, MAJ)
    assert again.is_empty and not again.shifts


def test_late_datatake_is_inserted_in_order():
    late, early = _product(5, "S2A", "31UFT"), _product(2, "S2B", "31UFT")
    published = {late.datatake: [late]}
    plan = plan_write(published, [early], MAJ)
    assert plan.axis == (early.datatake, late.datatake)
    assert plan.old_to_new == {0: 1} and plan.shifts
    assert [s.index for s in plan.slots] == [0] and plan.slots[0].is_new


def test_late_tile_recomputes_its_chunks_with_all_products():
    a, b = _product(3, "S2A", "31UFT"), _product(3, "S2A", "32ULC")
    plan = plan_write({a.datatake: [a]}, [b], MAJ)
    (slot,) = plan.slots
    assert not slot.is_new and slot.chunks == b.chunks
    assert [p.name for p in slot.products] == [a.name, b.name], "majority zone first"


def test_reprocessed_product_supersedes_never_the_reverse():
    old = _product(4, "S2B", "31UET", pb="04.00")
    new = _product(4, "S2B", "31UET", pb="05.09")
    plan = plan_write({old.datatake: [old]}, [new], MAJ)
    assert plan.superseded == (old.name,)
    assert [p.name for p in plan.slots[0].products] == [new.name]
    reverse = plan_write({new.datatake: [new]}, [old], MAJ)
    assert reverse.is_empty and reverse.superseded == (old.name,)
