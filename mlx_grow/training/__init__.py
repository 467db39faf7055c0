"""Training and growth: the compiled step (`step`), growth schedules (`schedule`),
the grow loop (`grow`), LoRA (`lora`), run directories and checkpoints (`runs`),
the frozen-prefix cache, the memory planner, parameter counts and `info`."""
