"""What a person reads after a stage or a run: markdown sections, plots, the run and dataset reports.

:mod:`.run` gathers a run's facts and renders ``report.md``/``report.html`` from the jinja2 templates in
``templates/``; :mod:`.grid` draws its pre-annotation grid; :mod:`.dataset` the dataset stage's report;
:mod:`.plots` and :mod:`.forked_plot` draw with matplotlib (the latter in a child process, beside the
work) and hold the label colours; :mod:`.markdown` holds the small shared pieces.
"""
