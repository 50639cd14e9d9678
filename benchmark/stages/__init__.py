"""The stages of a cell, one module each: what determines a stage's key (`spec`) and how it builds (`build`).

    upstream ──▶ backdoor (attack, seed) ──▶ transfer (seed) ──▶ defend (defense)     [model position]
        │               └──────────────────────────────────────▶ inspect (defense)    [data position]
        └──────────────────────────────────────▶ transfer (seed)   [the clean-upstream baseline]
    evaluate: the scores of a model before and after transfer (cached like a stage)

A stage's key is a hash of its spec (`store.key_of`), which names the keys of the stages it was built from, so
`Store.get(stage, spec)` answers whether it exists without building anything. `env.Env` holds what the stages
share within a scenario (its data, the registry, the device); `pipeline.Runner` composes them into cells.
"""
