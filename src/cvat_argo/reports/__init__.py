"""What a person reads after a stage or a run: markdown sections, plots, the run and dataset reports.

:mod:`.run` writes a run's ``report.md``/``report.html``; :mod:`.dataset` the dataset stage's report;
:mod:`.plots` and :mod:`.forked_plot` draw with matplotlib (the latter in a child process, beside the
work); :mod:`.markdown` holds the small shared pieces.
"""
