"""Commands around training: the grid and its report, gradient flow, the zoo
table, model summaries and the published baselines."""
