import dask
import numpy as np

from chemozone.progress import compute_with_progress, report_progress


def test_progress_on_a_distributed_client_and_locally():
    from distributed import Client, LocalCluster

    tasks = [dask.delayed(np.add)(i, 1) for i in range(5)]
    seen = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster):
        with report_progress(lambda stage, done, total: seen.append((stage, done, total))):
            out = compute_with_progress(tasks, "tiles: segment")
    assert out == (1, 2, 3, 4, 5)
    assert [d for _, d, _ in seen] == [1, 2, 3, 4, 5] and {t for _, _, t in seen} == {5}
    seen.clear()
    with dask.config.set(scheduler="synchronous"), report_progress(lambda *a: seen.append(a)):
        assert compute_with_progress(tasks, "x") == (1, 2, 3, 4, 5)
    assert seen[-1] == ("x", 5, 5)
    assert compute_with_progress(tasks, "no listener") == (1, 2, 3, 4, 5)


def test_segment_image_reports_its_tiles():
    from chemozone.segment import segment_image
    from chemozone.synth import generate_sample

    s = generate_sample(size_px=384, dose_gy=0, seed=2)
    seen = []
    with dask.config.set(scheduler="synchronous"), report_progress(lambda *a: seen.append(a)):
        segment_image(s["image"], channels=s["channels"], pixel_size_um=0.5,
                      tile_size_px=160, nuclear_channel="DAPI")
    stages = {st for st, _, _ in seen}
    assert {"tiles: statistics", "tiles: segment"} <= stages
    final = [(d, t) for st, d, t in seen if st == "tiles: segment"][-1]
    assert final[0] == final[1] > 1


def test_quantify_reports_its_tiles():
    from chemozone.quantify import quantify_cells

    labels = np.zeros((64, 64), np.uint32)
    labels[5:20, 5:20] = 1
    labels[40:60, 30:50] = 2
    img = np.ones((2, 64, 64), np.uint16)
    seen = []
    with report_progress(lambda *a: seen.append(a)):
        quantify_cells(img, labels, channels=["a", "b"], pixel_size_um=1.0, tile_size_px=32)
    assert seen[-1] == ("tiles: quantify", 4, 4)
