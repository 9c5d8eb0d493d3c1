"""What happens after release: the champion's batch forecasts kept in a store (``predict``), scored
against the actuals as they arrive and against the naive forecasts on the same origins
(``score``), input drift against the training span (``drift``), and the rule that says the
champion has decayed and retraining should start (``decay``). ``monitor`` and ``predict`` are the
entry points of the CLI and the flows; the task says what a forecast is (``tasks.base.Predicts``,
``Monitors``)."""
