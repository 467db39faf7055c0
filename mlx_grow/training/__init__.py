"""Training and growth: the run plan (`plan`), the loop (`loop`) and its
callbacks (`callbacks`) behind `grow`, the compiled step (`step`), the stage
plan (`schedule`), init and seeds (`init`), LoRA (`lora`), run directories and
checkpoints (`runs`), the frozen-prefix cache, the memory planner, parameter
counts and FLOPs (`params`) and `info`."""
