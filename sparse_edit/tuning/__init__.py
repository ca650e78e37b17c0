"""``sparse-edit tune``: a multi-objective search over the edit's settings, judged on generated dev replies.

``space`` reads the settings each strategy declares searchable, ``trial`` measures one setting
(solve from cached features, apply in memory, judge dev replies, harmless KL), ``front`` holds
the Pareto front, the choice rule and the files a study writes, ``study`` runs the Optuna study
with its resumable journal.
"""
