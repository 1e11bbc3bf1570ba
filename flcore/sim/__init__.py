"""The simulator: the paper's models, a run's plan, and the two engines that train it
(`engine="fast"`, stacked; `engine="reference"`, one model at a time), equal in fp64."""
