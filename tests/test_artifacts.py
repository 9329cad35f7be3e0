import threading

import boto3
import pytest

from bot.adapters.archive import file_digest
from bot.adapters.artifacts import ArtifactError, ArtifactStore, ChecksumError, make_s3_client
from tests.conftest import BUCKET, SERVICE
from tests.support.faulty_proxy import FaultyProxy

SHA1 = "a" * 40
SHA2 = "b" * 40


def count_requests(client) -> list:
    seen = []
    client.meta.events.register("before-send.s3", lambda request, **kw: seen.append(request.method))
    return seen


def test_publish_stores_the_package_under_the_layout_and_indexes_it(store, s3, package):
    result = store.publish("prod", SHA1, package("v1"), build_id="101", author="ana", message="first")
    key = f"rollback/{SERVICE}/prod/{SHA1}/101/package.zip"
    assert result.uploaded and result.artifact.key == key
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == result.artifact.size
    assert head["Metadata"]["sha256"] == result.artifact.sha256
    index = store.read_index("prod")
    assert [(a.commit, a.build_id, a.author, a.message) for a in index.artifacts] == [(SHA1, "101", "ana", "first")]
    assert index.live is None


def test_republishing_the_same_build_is_a_no_op(store, s3, package):
    first = store.publish("prod", SHA1, package("v1"), build_id="101")
    again = store.publish("prod", SHA1, package("v1"), build_id="101")
    assert not again.uploaded
    assert again.artifact == first.artifact
    assert len(store.read_index("prod").artifacts) == 1
    # without a build id, the id comes from the contents, so a rerun is a no-op too
    a = store.publish("prod", SHA2, package("v2"))
    b = store.publish("prod", SHA2, package("v2"))
    assert a.artifact.build_id == b.artifact.build_id and not b.uploaded
    assert len(store.read_index("prod").artifacts) == 2


def test_same_build_id_with_different_contents_is_refused(store, s3, package):
    store.publish("prod", SHA1, package("v1"), build_id="101")
    with pytest.raises(ArtifactError, match="different contents.*new --build-id"):
        store.publish("prod", SHA1, package("v2"), build_id="101")


def test_deployed_marks_live_and_history(store, package):
    store.publish("prod", SHA1, package("v1"), build_id="1", deployed=True, by="ci")
    store.publish("prod", SHA2, package("v2"), build_id="2", deployed=True, by="ci")
    index = store.read_index("prod")
    assert index.live.ident == (SHA2, "2")
    assert [h.commit for h in index.history] == [SHA2, SHA1]
    assert index.resolve("previous").commit == SHA1
    art, changed = store.mark_deployed("prod", SHA1, by="ana")
    assert changed and store.read_index("prod").live.ident == (SHA1, "1")
    with pytest.raises(ArtifactError, match="no published build"):
        store.mark_deployed("prod", "c" * 40)


def test_four_concurrent_publishers_lose_nothing(s3, package, tmp_path):
    pkg = package("v1")
    errors = []

    def publisher(n: int) -> None:
        # each thread is its own CI machine: its own client and its own cache
        mine = ArtifactStore(make_s3_client(), BUCKET, SERVICE, prefix="rollback/")
        try:
            for i in range(25):
                mine.publish("prod", f"{n:x}{i:039x}", pkg, build_id=f"{n}-{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fresh = ArtifactStore(make_s3_client(), BUCKET, SERVICE, prefix="rollback/")
    builds = {a.build_id for a in fresh.read_index("prod").artifacts}
    assert builds == {f"{n}-{i}" for n in range(4) for i in range(25)}


def test_a_warm_listing_costs_one_request_answered_304(store, s3, package):
    store.publish("prod", SHA1, package("v1"), build_id="1")
    reader = ArtifactStore(s3, BUCKET, SERVICE, prefix="rollback/")
    reader.read_index("prod")
    seen = count_requests(s3)
    index = reader.read_index("prod")
    assert seen == ["GET"] and len(index.artifacts) == 1
    store.publish("prod", SHA2, package("v2"), build_id="2")  # a change is seen at once
    assert len(reader.read_index("prod").artifacts) == 2


def test_download_verifies_and_unpacks(store, package, tmp_path):
    src = package("v1")
    art = store.publish("prod", SHA1, src, build_id="1").artifact
    out = store.download(art, tmp_path / "restore")
    assert file_digest(out / f"{SERVICE}.zip") == file_digest(src / f"{SERVICE}.zip")
    assert (out / "cloudformation-template-update-stack.json").exists()


def test_a_tampered_artifact_is_refused_and_nothing_unpacked(store, s3, package, tmp_path):
    art = store.publish("prod", SHA1, package("v1"), build_id="1").artifact
    # swapped contents under the original metadata: the bytes' own sha256 catches it
    s3.put_object(Bucket=BUCKET, Key=art.key, Body=b"PK\x03\x04 something else", Metadata={"sha256": art.sha256})
    dest = tmp_path / "restore"
    with pytest.raises(ChecksumError, match="corrupt in S3.*Nothing was unpacked"):
        store.download(art, dest)
    assert list(dest.iterdir()) == []


def test_an_object_whose_metadata_disagrees_with_the_index_is_refused(store, s3, package, tmp_path):
    art = store.publish("prod", SHA1, package("v1"), build_id="1").artifact
    other = store.publish("prod", SHA2, package("v2"), build_id="2").artifact
    # someone copies build 2's object (with its own metadata) over build 1's key
    s3.copy_object(Bucket=BUCKET, Key=art.key, CopySource={"Bucket": BUCKET, "Key": other.key})
    with pytest.raises(ChecksumError, match="sha256 metadata .* does not match the index"):
        store.download(art, tmp_path / "restore")
    with pytest.raises(ArtifactError, match="sha256 metadata .* does not match the index"):
        store.read_members(art, ["cloudformation-template-update-stack.json"])
    assert not (tmp_path / "restore" / "package").exists()


def test_missing_bucket_is_a_clear_error(aws_env, package):
    store = ArtifactStore(make_s3_client(1), "no-such-bucket", SERVICE)
    with pytest.raises(ArtifactError, match="bucket 'no-such-bucket' does not exist.*ROLLBACK_BUCKET"):
        store.publish("prod", SHA1, package("v1"))
    with pytest.raises(ArtifactError, match="does not exist"):
        store.read_index("prod")


def test_missing_credentials_are_a_clear_error(aws_env, monkeypatch, tmp_path, package):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = ArtifactStore(make_s3_client(1), BUCKET, SERVICE)
    with pytest.raises(ArtifactError, match="no AWS credentials.*AWS_ACCESS_KEY_ID"):
        store.publish("prod", SHA1, package("v1"))


def test_bad_input_is_refused_before_any_upload(store, s3, package, tmp_path):
    with pytest.raises(ArtifactError, match="not a full SHA"):
        store.publish("prod", "abc123", package("v1"))
    with pytest.raises(ArtifactError, match="not a valid stage"):
        store.publish("prod/../x", SHA1, package("v1"))
    with pytest.raises(ArtifactError, match="does not exist"):
        store.publish("prod", SHA1, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="empty"):
        store.publish("prod", SHA1, tmp_path / "empty")
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


@pytest.fixture
def proxy(moto_server, s3):
    p = FaultyProxy(moto_server.url)
    yield p
    p.stop()


def proxied_store(proxy, attempts=4):
    client = boto3.session.Session().client(
        "s3", endpoint_url=proxy.url,
        config=make_s3_client(attempts).meta.config,
    )
    return ArtifactStore(client, BUCKET, SERVICE, prefix="rollback/")


def test_s3_5xx_is_retried_with_backoff(proxy, package):
    store = proxied_store(proxy)
    proxy.fail(2, 503)
    result = store.publish("prod", SHA1, package("v1"), build_id="1")
    assert proxy.failed == 2
    assert result.uploaded and store.read_index("prod").find(SHA1, "1") is not None


def test_s3_that_keeps_failing_is_a_clear_failure_and_nothing_half_written(proxy, s3, store, package):
    faulty = proxied_store(proxy, attempts=2)
    faulty.read_index("prod")
    # uploads pass, then every request fails: the index write cannot land
    original = faulty.update_index

    def failing_update(stage, change):
        proxy.fail(-1, 500)
        try:
            return original(stage, change)
        finally:
            proxy.fail(0)

    faulty.update_index = failing_update
    with pytest.raises(ArtifactError, match="S3 kept failing.*500.*after 2 attempts.*Nothing was changed"):
        faulty.publish("prod", SHA1, package("v1"), build_id="1")
    # the uploaded object was removed again, and the index does not exist
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_prune_keeps_live_last_good_and_in_use(store, s3, package, tmp_path):
    arts = []
    for i in range(6):
        arts.append(store.publish("prod", f"{i:x}" * 40, package(f"v{i}"), build_id=str(i)).artifact)
    store.mark_deployed("prod", arts[0].commit, "0")  # oldest went live, then build 1
    store.mark_deployed("prod", arts[1].commit, "1")

    def in_use(index):
        from bot.core.stage_index import InUse
        index.in_use.append(InUse(arts[2].commit, "2", "job-7", 1.0))

    store.update_index("prod", in_use)

    dry = store.prune("prod", keep=2, dry_run=True)
    assert {a.build_id for a in dry.removed} == {"3"}  # 5,4 newest; 1 live; 0 last good; 2 in use
    assert len(store.read_index("prod").artifacts) == 6  # dry run changed nothing

    result = store.prune("prod", keep=2)
    assert {a.build_id for a in result.removed} == {"3"}
    assert result.protected[(arts[1].commit, "1")] == "live"
    assert result.protected[(arts[0].commit, "0")] == "last known-good"
    assert result.protected[(arts[2].commit, "2")] == "used by job job-7"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert arts[3].key not in keys and arts[5].key in keys and arts[0].key in keys
    assert [a.build_id for a in store.read_index("prod").artifacts] == ["5", "4", "2", "1", "0"]


def test_people_asking_at_once_share_one_index_request_and_its_failure(proxy, store, package):
    store.publish("prod", SHA1, package("v1"), build_id="1")
    reader = proxied_store(proxy, attempts=1)
    reader.read_index("prod")
    proxy.delay = 0.3  # every request takes long enough for the readers to overlap

    def twenty_at_once():
        barrier = threading.Barrier(20)
        results = []

        def read():
            barrier.wait()
            try:
                results.append([a.build_id for a in reader.read_index("prod").artifacts])
            except ArtifactError as exc:
                results.append(str(exc))

        threads = [threading.Thread(target=read) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    before = proxy.requests
    assert twenty_at_once() == [["1"]] * 20
    assert proxy.requests - before <= 2  # one shared revalidation (a late thread may start a second)

    # sharing never serves an old answer to a later question
    store.publish("prod", SHA2, package("v2"), build_id="2")
    assert [a.build_id for a in reader.read_index("prod").artifacts] == ["2", "1"]

    proxy.fail(-1, 500)
    errors = twenty_at_once()
    assert len(errors) == 20 and all("500" in e for e in errors)
