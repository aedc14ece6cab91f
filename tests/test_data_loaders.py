"Loaders of hvr_nbs.loaders on fixtures written in each data set's official layout (nothing is downloaded), and hvr_nbs.data's builders on them."
import warnings
from collections import Counter

import pytest

from hvr_nbs.data import rank_questions, verification_pairs, split_dataset, LETTERS
from hvr_nbs.loaders import DATASET_LAYOUTS, LOADERS, CorruptImageError, check_data_root, make_fixture

# loader-specific keyword arguments for the fixture runs
KW = {"fgvc_aircraft": lambda tmp: dict(cache=tmp / "crop"), "birds_to_words": lambda tmp: dict(taxonomy=None)}


def _kw(name, tmp): return KW.get(name, lambda t: {})(tmp)


@pytest.mark.parametrize("name", sorted(DATASET_LAYOUTS))
def test_loader_reads_its_fixture(name, tmp_path):
    root = make_fixture(name, tmp_path / name)
    ds, tax, info = LOADERS[name](root, **_kw(name, tmp_path))
    assert len(ds) == info["n_rows"] > 0
    assert info["skipped"] == []
    img_col = "images" if name == "birds_to_words" else "image"
    first = ds[0][img_col]
    first = first[0] if isinstance(first, list) else first
    assert first.size[0] > 0
    if tax is not None and name != "birds_to_words":
        for r in tax.ranks: assert r in ds.column_names, r
        for row in ds.select(range(min(5, len(ds)))):
            assert tuple(row[r] for r in tax.ranks) == tax.path(row[tax.leaf_rank])


@pytest.mark.parametrize("name", sorted(DATASET_LAYOUTS))
def test_corrupt_image_raise_or_skip(name, tmp_path):
    root = make_fixture(name, tmp_path / name, corrupt=1)
    with pytest.raises(CorruptImageError):
        LOADERS[name](root, **_kw(name, tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, info = LOADERS[name](root, on_corrupt="skip", **_kw(name, tmp_path))
    assert len(info["skipped"]) == 1


@pytest.mark.parametrize("name", sorted(DATASET_LAYOUTS))
def test_missing_root_names_what_is_expected(name, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        check_data_root(name, tmp_path / "absent")
    assert DATASET_LAYOUTS[name][0].split("|")[0] in str(e.value)
    with pytest.raises(FileNotFoundError):
        LOADERS[name](tmp_path / "absent")


def test_missing_image_file_is_named(tmp_path):
    root = make_fixture("oxford_pet", tmp_path / "pet")
    (root / "images" / "Abyssinian_1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="Abyssinian_1.jpg"):
        LOADERS["oxford_pet"](root)


def test_builders_on_cub_fixture(tmp_path):
    ds, tax, _ = LOADERS["cub"](make_fixture("cub", tmp_path / "cub", n_classes=10, n_per_class=4))
    pairs = verification_pairs(ds, tax, n_pairs=50, proportions={"same_species": 1, "same_genus": 1, "different": 3})
    assert Counter(pairs["stratum"]) == {"same_species": 10, "same_genus": 10, "different": 30}
    sp = split_dataset(ds, seed=0)
    assert sum(len(v) for v in sp.values()) == len(ds)
    q = rank_questions(ds.select(list(range(len(ds))) * 10), tax, seed=0)
    counts = Counter(q["answer"])
    assert set(counts) == set(LETTERS[:4]) and min(counts.values()) > 0.2 * len(q)


def test_official_top_folder_is_found(tmp_path):
    make_fixture("cub", tmp_path / "cub" / "CUB_200_2011", n_classes=2, n_per_class=2)
    assert check_data_root("cub", tmp_path / "cub") == tmp_path / "cub" / "CUB_200_2011"
    ds, _, _ = LOADERS["cub"](tmp_path / "cub")
    assert len(ds) == 4


def test_layout_alternatives(tmp_path):
    root = tmp_path / "df"
    (root / "DF20_300").mkdir(parents=True)
    for f in ("DF20M-train_metadata_PROD.csv", "DF20M-public_test_metadata_PROD.csv"): (root / f).write_text("")
    assert check_data_root("danish_fungi", root) == root
