"""Fine-tuning's building blocks: ``--labels``, the labelled subset, its file list, the recipe."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastclr.finetune import (
    SUBSET_FILE,
    choose_labelled,
    finetune_recipe,
    parse_labels,
    read_subset,
    resolve_subset,
    write_subset,
)
from fastclr.finetune.recipe import paper_epochs, paper_steps


def _listing(counts: list[int]) -> tuple[list[str], list[int], list[str]]:
    """ids ``c<k>/<i>.png``, labels and class names for classes of ``counts`` images."""
    classes = [f"c{k}" for k in range(len(counts))]
    ids, labels = [], []
    for k, n in enumerate(counts):
        ids += [f"c{k}/{i:04d}.png" for i in range(n)]
        labels += [k] * n
    return ids, labels, classes


# ------------------------------------------------------------------------------ --labels


@pytest.mark.parametrize(
    ("text", "fraction", "per_class"),
    [
        ("1%", 0.01, None),
        ("10%", 0.1, None),
        ("100%", 1.0, None),
        ("0.5%", 0.005, None),
        (" 25 % ", 0.25, None),
        ("4-per-class", None, 4),
        ("1-per-class", None, 1),
    ],
)
def test_parse_labels(text: str, fraction: float | None, per_class: int | None) -> None:
    spec = parse_labels(text)
    assert spec.per_class == per_class
    assert spec.fraction == pytest.approx(fraction) if fraction else spec.fraction is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0%", "more than 0% and at most 100%"),
        ("150%", "at most 100%"),
        ("-1%", "--labels must be"),
        ("0-per-class", "at least 1 labelled image per class"),
        ("ten%", "--labels must be"),
        ("", "--labels must be"),
        ("0.01", r"for a fraction write 1%"),
        ("5", "--labels must be"),
    ],
)
def test_parse_labels_refuses(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_labels(text)


# ------------------------------------------------------------------------------ the subset


def test_fractions_are_class_balanced() -> None:
    ids, labels, classes = _listing([100] * 10)
    for text, each in (("1%", 1), ("10%", 10), ("100%", 100)):
        sub = choose_labelled(ids, labels, classes, parse_labels(text), seed=0)
        assert sub.per_class == (each,) * 10
        assert [sum(labels[i] == k for i in sub.indices) for k in range(10)] == [each] * 10


def test_a_small_class_gives_all_it_has_and_the_rest_go_to_the_others() -> None:
    ids, labels, classes = _listing([3, 50, 50, 50])
    sub = choose_labelled(ids, labels, classes, parse_labels("20%"), seed=0)  # 31 images
    assert len(sub.indices) == 31 and sub.per_class[0] == 3
    assert sorted(sub.per_class[1:]) == [9, 9, 10]
    assert "31 of 153 training images" in sub.describe() and "3 to 10 per class" in sub.describe()


@given(
    counts=st.lists(st.integers(1, 40), min_size=2, max_size=8),
    pct=st.floats(0.5, 100.0),
    seed=st.integers(0, 2**31),
)
def test_subset_properties(counts: list[int], pct: float, seed: int) -> None:
    ids, labels, classes = _listing(counts)
    spec = parse_labels(f"{pct}%")
    total = math.floor(pct / 100 * len(ids) + 0.5)
    if total < len(classes):
        with pytest.raises(ValueError, match="fewer than the"):
            choose_labelled(ids, labels, classes, spec, seed)
        return
    sub = choose_labelled(ids, labels, classes, spec, seed)
    q = sub.per_class
    assert len(sub.indices) == sum(q) == total and len(set(sub.indices)) == total
    assert all(1 <= q[k] <= counts[k] for k in range(len(q)))
    # balanced: a class holds fewer than another's share minus one only when it gave them all
    assert all(q[a] >= q[b] - 1 or q[a] == counts[a] for a in range(len(q)) for b in range(len(q)))
    assert [sum(labels[i] == k for i in sub.indices) for k in range(len(q))] == list(q)


def test_the_draw_is_seeded_and_independent_of_the_listing_order() -> None:
    ids, labels, classes = _listing([30] * 5)
    spec = parse_labels("10%")
    a = choose_labelled(ids, labels, classes, spec, seed=3)
    assert a == choose_labelled(ids, labels, classes, spec, seed=3)
    assert a.indices != choose_labelled(ids, labels, classes, spec, seed=4).indices
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    shuffled = choose_labelled(
        [ids[i] for i in order], [labels[i] for i in order], classes, spec, seed=3
    )
    assert {ids[order[i]] for i in shuffled.indices} == {ids[i] for i in a.indices}


def test_the_draw_is_the_same_on_every_machine() -> None:
    """Pinned: SHA-256 ranking, not a library RNG whose stream may change between versions."""
    ids, labels, classes = _listing([6, 6])
    sub = choose_labelled(ids, labels, classes, parse_labels("2-per-class"), seed=0)
    assert [ids[i] for i in sub.indices] == PINNED


PINNED = ["c0/0001.png", "c0/0005.png", "c1/0001.png", "c1/0002.png"]


def test_subset_errors() -> None:
    ids, labels, classes = _listing([100] * 10)
    with pytest.raises(
        ValueError, match=r"is 5 labelled image\(s\), fewer than the 10 classes.*1%"
    ):
        choose_labelled(ids, labels, classes, parse_labels("0.5%"), 0)
    ids, labels, classes = _listing([10, 3, 2])
    with pytest.raises(ValueError, match=r"class 'c1' has only 3 training image\(s\); 2 classes"):
        choose_labelled(ids, labels, classes, parse_labels("4-per-class"), 0)
    with pytest.raises(ValueError, match="class 'c3' has no training images"):
        choose_labelled(ids, labels, [*classes, "c3"], parse_labels("100%"), 0)


# ------------------------------------------------------------------------------ the file list


def test_file_list_round_trip_and_checks(tmp_path: Path) -> None:
    ids, labels, classes = _listing([20, 20, 20])
    sub = choose_labelled(ids, labels, classes, parse_labels("10%"), seed=7)
    path = write_subset(tmp_path, sub, ids, labels, classes)
    assert path == tmp_path / SUBSET_FILE
    lines = path.read_text().splitlines()
    assert lines[0] == "# fastclr labelled subset: --labels 10% --seed 7"
    assert lines[2:] == [f"{ids[i]}\t{classes[labels[i]]}" for i in sub.indices]
    listed = read_subset(tmp_path)
    assert (listed.labels, listed.seed, len(listed.rows)) == ("10%", 7, 6)
    assert resolve_subset(listed, ids, labels, classes) == sub.indices
    # the same images found in a listing of another order
    rev = len(ids) - 1
    got = resolve_subset(listed, ids[::-1], labels[::-1], classes)
    assert sorted(ids[rev - k] for k in got) == sorted(ids[i] for i in sub.indices)

    first = ids[sub.indices[0]]
    with pytest.raises(ValueError, match=f"lists '{first}', which is not among the 59"):
        keep = [k for k, i in enumerate(ids) if i != first]
        resolve_subset(listed, [ids[k] for k in keep], [labels[k] for k in keep], classes)
    with pytest.raises(ValueError, match=f"lists '{first}' as class 'c0', but it is in class 'c1'"):
        resolve_subset(listed, ids, [{0: 1, 1: 0}.get(y, y) for y in labels], classes)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a.png\n", "line 1: expected"),
        ("a.png\tc0\nb.png\tc1\na.png\tc0\n", "'a.png' twice"),
        ("# only comments\n", "lists no images"),
    ],
)
def test_malformed_file_lists(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / SUBSET_FILE).write_text(text)
    with pytest.raises(ValueError, match=match):
        resolve_subset(read_subset(tmp_path), ["a.png", "b.png"], [0, 1], ["c0", "c1"])
    with pytest.raises(ValueError, match="cannot be read"):
        read_subset(tmp_path / "missing.txt")


def test_ids_with_separators_are_refused(tmp_path: Path) -> None:
    ids, labels, classes = ["a\tb.png", "c.png"], [0, 1], ["x", "y"]
    sub = choose_labelled(ids, labels, classes, parse_labels("100%"), 0)
    with pytest.raises(ValueError, match="no tabs or newlines"):
        write_subset(tmp_path, sub, ids, labels, classes)
    assert not (tmp_path / SUBSET_FILE).exists()


# ------------------------------------------------------------------------------ the recipe


def test_paper_schedule_numbers() -> None:
    assert (paper_epochs(0.01), paper_epochs(0.1)) == (60, 30)
    assert paper_epochs(math.sqrt(0.001)) == pytest.approx(45)  # geometric midpoint
    assert (paper_epochs(0.001), paper_epochs(1.0)) == (60, 30)
    assert (paper_steps(0.01), paper_steps(0.1), paper_steps(1.0)) == (188, 939, 939)


def test_recipe_at_imagenet_scale_is_the_papers() -> None:
    r = finetune_recipe(12_812, 1_281_167, batch_size=4096)
    assert (r.steps_per_epoch.value, r.lr.value) == (3, pytest.approx(0.8))  # 0.05 x 4096/256
    # the paper's 60 epochs of 3.1 batches are 188 steps (its code counts the partial batch);
    # in full batches that is 63 epochs of 3
    assert r.epochs.value == 63 and r.total_steps >= paper_steps(0.01) == 188
    r = finetune_recipe(128_117, 1_281_167, batch_size=4096)
    assert (r.epochs.value, r.steps_per_epoch.value) == (31, 31)  # 961 >= 939 steps
    assert "raised to the 939 steps" in r.epochs.reason
    # at the default batch of 256 the square-root rule gives 0.0125 x 16
    assert finetune_recipe(12_812, 1_281_167).lr.value == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("n", "n_train", "batch", "steps", "epochs", "lr"),
    [
        (40, 1295, 16, 2, 219, 0.05),  # 4 digits a class: the paper's 438 steps at 3.1%
        (130, 1295, 16, 8, 118, 0.05),  # 10%: 939 steps
        (1295, 1295, 128, 10, 94, 0.0125 * math.sqrt(128)),  # all of them: 128 gives 10 steps
        (14, 1438, 14, 1, 183, 0.0125 * math.sqrt(14)),  # fewer than the floor: one batch
    ],
)
def test_small_folders_get_the_papers_number_of_steps(
    n: int, n_train: int, batch: int, steps: int, epochs: int, lr: float
) -> None:
    r = finetune_recipe(n, n_train)
    assert (r.batch_size.value, r.steps_per_epoch.value, r.epochs.value) == (batch, steps, epochs)
    assert r.lr.value == pytest.approx(lr)
    assert r.total_steps >= paper_steps(n / n_train) > (epochs - 1) * steps
    assert "raised to the" in r.epochs.reason and "square-root rule" in r.lr.reason
    assert [name for name, _, _ in r.rows()] == ["batch_size", "steps_per_epoch", "lr", "epochs"]
    assert all(reason for _, _, reason in r.rows())


def test_the_batch_splits_over_the_ranks() -> None:
    r = finetune_recipe(130, 1295, world_size=3)
    assert (r.batch_size.value, r.steps_per_epoch.value) == (15, 8)  # 16 → 15, 43 // 5 each
    with pytest.raises(ValueError, match="does not split evenly over 4 ranks"):
        finetune_recipe(130, 1295, batch_size=18, world_size=4)


def test_given_values_win_and_bad_ones_are_refused() -> None:
    r = finetune_recipe(100, 1000, batch_size=50, epochs=3, lr=0.1)
    assert (r.batch_size.value, r.epochs.value, r.lr.value) == (50, 3, 0.1)
    assert {r.batch_size.reason, r.epochs.reason, r.lr.reason} == {"given"}
    for kwargs, match in (
        ({"batch_size": 101}, "larger than the 100 labelled"),
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"lr": -1.0}, "--lr must be a finite number > 0"),
        ({"lr": float("nan")}, "--lr must be"),
    ):
        with pytest.raises(ValueError, match=match):
            finetune_recipe(100, 1000, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need 1 <= labelled images"):
        finetune_recipe(0, 1000)
