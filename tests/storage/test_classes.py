"""The class of slices without tumour (storage.classes)."""

from storage.brats import BRATS_CLASSES
from storage.classes import TUMOUR_FREE, has_tumour_free_class
from storage.jun_cheng import JUN_CHENG_CLASSES


def test_only_stores_listing_tumour_free_first_have_slices_without_tumour():
    assert has_tumour_free_class(BRATS_CLASSES) and BRATS_CLASSES[0] == TUMOUR_FREE
    assert not has_tumour_free_class(JUN_CHENG_CLASSES)
    assert not has_tumour_free_class(["LGG", TUMOUR_FREE]) and not has_tumour_free_class([])
