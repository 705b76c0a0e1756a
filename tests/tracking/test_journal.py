"""The journal: metric rows on disk between a trial's results and MLflow."""


def test_the_journal_reads_whole_lines_in_chunks_and_keeps_nan(tmp_path):
    import math

    from rlsweep.tracking.journal import Journal

    j = Journal(tmp_path)
    for step in range(5):
        j.append("t", (step, 1000 + step, {"a": float(step), "b": math.nan if step == 4 else 1.0}))
    with open(j.path("t"), "ab") as f:
        f.write(b'[5,1005,{"a":')  # a line being written when read
    rows, end = j.read("t", max_metrics=4)
    assert [r[0] for r in rows] == [0, 1]
    j.advance("t", end)
    rows, end = j.read("t")
    assert [r[0] for r in rows] == [2, 3, 4] and math.isnan(rows[-1][2]["b"])
    j.advance("t", end)
    assert j.read("t") == ([], end) and j.unread("t", end)  # the partial line waits
    assert not j.unread("t", j.path("t").stat().st_size) and not j.unread("none", 0)
    j.close()
    assert Journal(tmp_path).read("t", max_metrics=1)[0][0][0] == 0  # a new process starts from the top


