import json

import pytest

from pie_core.errors import BadInput
from results.record import SCHEMA_VERSION, RequestSample, RunHeader
from results.store import ResultsStore, load_record, new_run_id, utc_now


def _header(runner="pie", label=None, model="opt-125m"):
    return RunHeader(run_id=new_run_id(runner), created_at=utc_now(), model=model, runner=runner,
                     workload={"name": "synthetic-sharegpt", "synthetic": True}, config={}, fingerprint={"cpu": "x"},
                     label=label)


def _sample(i):
    return RequestSample(request_id=str(i), prompt_len=10, output_len=3, arrival_s=0.0, ttft_s=0.1, e2el_s=0.3,
                         itl_s=(0.1, 0.1))


def test_roundtrip_complete_record(tmp_path):
    store = ResultsStore(tmp_path)
    with store.writer(_header(label="a")) as writer:
        writer.add(_sample(0))
        writer.add(_sample(1))
        writer.finish({"output_throughput": 10.0})
    (record,) = store.records()
    assert record.complete and len(record.requests) == 2
    assert record.requests[0].itl_s == (0.1, 0.1)
    assert store.load(record.run_id[:20]).summary == {"output_throughput": 10.0}
    assert [r.run_id for r in store.select(label="a")] == [record.run_id]
    assert store.select(label="b") == []


def test_interrupted_record_keeps_finished_requests(tmp_path):
    store = ResultsStore(tmp_path)
    writer = store.writer(_header())
    writer.add(_sample(0))
    writer._file.write('{"type": "request", "request_id": "1", "prom')  # torn line
    writer.close()
    record = load_record(writer.path)
    assert not record.complete and len(record.requests) == 1


def test_never_overwrites(tmp_path):
    store = ResultsStore(tmp_path)
    header = _header()
    store.writer(header).close()
    with pytest.raises(FileExistsError):
        store.writer(header)


def test_bad_records(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_record(tmp_path / "missing.jsonl")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("{not json\n{}\n")
    with pytest.raises(BadInput, match="corrupt"):
        load_record(corrupt)
    future = tmp_path / "future.jsonl"
    future.write_text(json.dumps({"type": "header", "schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(BadInput, match="newer"):
        load_record(future)
    with pytest.raises(BadInput, match="no record"):
        ResultsStore(tmp_path).load("nope")
