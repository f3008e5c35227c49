import pickle

from storage.errors import CaseRejected, NoUsableInput, one_line


def test_case_rejected_round_trips_through_pickle():
    exc = CaseRejected("a/b_t1.nii.gz", "voxel data unreadable")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is CaseRejected and (back.file, back.reason) == (exc.file, exc.reason)
    assert str(back) == "a/b_t1.nii.gz: voxel data unreadable"


def test_no_usable_input_round_trips_with_its_rejections():
    exc = NoUsableInput("src: every brats case was rejected (1)", {"a.nii.gz": "truncated"})
    back = pickle.loads(pickle.dumps(exc))
    assert str(back) == str(exc) and back.rejected == {"a.nii.gz": "truncated"}


def test_reasons_are_one_line():
    message = "Expected 24 bytes, got 12 bytes from object\n - could the file be damaged?\n"
    assert one_line(message) == "Expected 24 bytes, got 12 bytes from object - could the file be damaged?"
    assert CaseRejected("f", "first\nsecond").reason == "first second"
