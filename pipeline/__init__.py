"""gft-pipeline, by layer (each imports only the layers before it; ``tests/test_layers.py``):
``core`` (the Arrow batch, losses, advantages, data, checkpoints, errors), ``embedded`` (the
default's task and tiny model), ``rewards``, ``eval``, ``recipe`` (typed configs and the
algorithms' specs), then ``workers`` (the Ray roles, a top-level package), ``driver`` (the
stages of a run, through ``driver.roles``), ``tools`` (compare, report, submit, data prep)
and ``cli``. ``docs/design.md`` draws it."""
