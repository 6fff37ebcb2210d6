"""Read a screening output's tables from Python with deltalake and pyarrow alone: the rows of complete runs.

    python examples/read_results.py [OUTPUT]        # a local results folder; default: out/demo

Each table is read through a pyarrow filesystem handed to ``to_pyarrow_dataset`` (``table_rows``). Left to its
own filesystem, deltalake reads the files through Python from pyarrow's threads, and a script that turns a table
into Arrow can then abort as it exits (status 134, "terminate called without an active exception") when those
threads and deltalake's shut down in the wrong order. Rows of a run still between its commits are left out by
keeping the run ids the ``runs`` table records.
"""

import os
import sys

import deltalake
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs


def table_rows(output: str, name: str) -> pa.Table:
    """Every row of the table ``name`` of the local results folder ``output``, as Arrow."""
    path = os.path.abspath(os.path.join(output, name))
    files = pyarrow.fs.SubTreeFileSystem(path, pyarrow.fs.LocalFileSystem())
    return deltalake.DeltaTable(path).to_pyarrow_dataset(filesystem=files).to_table()


def main(output: str) -> None:
    runs = table_rows(output, "runs")
    predictions = table_rows(output, "predictions")
    complete = predictions.filter(pc.is_in(predictions["run_id"], runs["run_id"]))
    flagged = complete.filter(pc.fill_null(complete["flagged"], False))
    print(f"{runs.num_rows} runs, {complete.num_rows} prediction rows, {flagged.num_rows} flagged")
    columns = ["run_date", "source_uri", "tumor_probability", "predicted_class"]
    print(flagged.select(columns).sort_by([("tumor_probability", "descending")]).to_pandas().to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/demo")
