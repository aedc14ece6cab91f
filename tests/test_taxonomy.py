"Property tests for hvr_nbs.taxonomy on random trees (the notebook holds the worked examples)."
import pytest
from hypothesis import given, settings, strategies as st
from hvr_nbs.taxonomy import Taxonomy, TaxonomyError

RANKS = ["order", "family", "genus", "species"]


@st.composite
def trees(draw):
    "A random consistent tree: branching 1-3 at each rank, names unique per rank."
    paths = []
    def grow(prefix, depth):
        for i in range(draw(st.integers(1, 3))):
            name = f"{RANKS[depth][0]}{len(paths)}_{'_'.join(prefix[-1:])}_{i}"
            if depth == len(RANKS) - 1: paths.append(prefix + [name])
            else: grow(prefix + [name], depth + 1)
    grow([], 0)
    return Taxonomy(paths, RANKS)


@settings(max_examples=40, deadline=None)
@given(trees(), st.data())
def test_distance_is_an_ultrametric(tax, data):
    a, b, c = (data.draw(st.sampled_from(tax.leaves)) for _ in range(3))
    assert tax.distance(a, a) == 0
    assert tax.distance(a, b) == tax.distance(b, a)
    assert (tax.distance(a, b) == 0) == (a == b)
    assert tax.distance(a, c) <= max(tax.distance(a, b), tax.distance(b, c))
    assert tax.strata.index(tax.stratum(a, b)) == tax.distance(a, b)


@settings(max_examples=40, deadline=None)
@given(trees())
def test_tree_navigation_is_consistent(tax):
    for r in tax.ranks[:-1]:
        for node in tax.nodes_at(r):
            under = tax.leaves_under(node, r)
            assert under and all(tax.name_at(l, r) == node for l in under)
            for child in tax.children(node, r): assert tax.parent(child) == node
    assert sorted(l for o in tax.children() for l in tax.leaves_under(o)) == sorted(tax.leaves)
    for leaf in tax.leaves:
        sibs = tax.siblings(leaf)
        assert leaf not in sibs and all(tax.distance(leaf, s) == 1 for s in sibs)
    assert Taxonomy.from_table(tax.to_frame()) == tax


def test_every_error_names_the_offender():
    with pytest.raises(TaxonomyError, match="'x y' has two different paths"):
        Taxonomy([["O", "F", "G", "x y"], ["O", "F2", "G2", "x y"]], RANKS)
    with pytest.raises(TaxonomyError, match="leaf 'x y'.*missing rank"):
        Taxonomy([["O", "F", "x y"]], RANKS)
    with pytest.raises(TaxonomyError, match="family 'F' sits under two different order names"):
        Taxonomy([["O1", "F", "G1", "a"], ["O2", "F", "G2", "b"]], RANKS)
    with pytest.raises(KeyError, match="not a leaf"):
        Taxonomy([["O", "F", "G", "a"]], RANKS).path("zz")


@pytest.mark.parametrize("name,n", [("cub200", 200), ("inat_animal", 5388), ("inat_plantae", 4271)])
def test_packaged(name, n):
    tax = Taxonomy.packaged(name)
    assert len(tax) == n and tax.ranks[-1] == "species"
    leaf = tax.leaves[0]
    assert tax.distance(leaf, leaf) == 0 and tax.path(leaf)[-1] == leaf
