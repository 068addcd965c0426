from cvat_argo.reports.markdown import capped_section


def test_capped_section_lists_up_to_the_limit_and_says_where_the_rest_is():
    assert capped_section("Skipped", [], "dataset.json") == []
    assert capped_section("Skipped", ["a: why", "b: why"], "dataset.json") == ["", "## Skipped", "", "- a: why",
                                                                             "- b: why"]
    lines = capped_section("Skipped images", [f"image {i}" for i in range(53)], "summary.json", limit=50)
    assert lines[3:5] == ["- image 0", "- image 1"] and lines[-2] == "- image 49"
    assert lines[-1] == "- ... and 3 more (all in summary.json)"
