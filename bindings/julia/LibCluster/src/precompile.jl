# Compile ahead what every process runs, so that the first addprocs and the
# first remote call spend less time in the compiler: a small serialization
# workload (no C calls) and precompile directives for the rest.

"""
    warmup()

Runs the serialization paths of a call once (no C calls), so that the
compiler has done its work before the first real call. Run at precompile
time, and at run time in a task while the head waits for new workers and
while a new worker waits for its first call.
"""
function warmup()
    WARMED_UP[] && return
    WARMED_UP[] = true
    _precompile_workload()
end
const WARMED_UP = Ref(false)

function _precompile_workload()
    kw = pairs(NamedTuple())
    for (f, args) in ((myid, ()), (+, (1, 2)), (identity, ("x",)), (sum, ([1.0, 2.0],)),
                      (Core.eval, (Main, :(1 + 1))))
        io = encode_call(0, f, args, kw)
        decode_call(take!(io))
    end
    for v in (1, 1.0, "s", nothing, [1.0, 2.0], [1, 2], (1, 2), Dict(1 => 2), :sym, true, Any[1, "a"])
        decode_reply(take!(encode_ok(v)), 2)
    end
    decode_reply(take!(encode_err(ErrorException("x"), backtrace())), 2)
    decode_reply(take!(encode_err(UndefVarError(:x), backtrace())), 2)
    nothing
end

_precompile_workload()
WARMED_UP[] = false

for (f, types) in (
        (context, ()), (init, ()), (start!, (Symbol,)), (event_loop, ()),
        (poll!, (Vector{CAPI.Event}, Base.RefValue{Csize_t})), (handle_event, (CAPI.Event,)),
        (wake_waiters, (UInt64,)), (on_lifecycle, (Int, Int32)), (interrupt_running_calls, ()),
        (start_call, (Int, Ptr{Cvoid})), (run_call, (Int, Ptr{Cvoid})),
        (run_julia_call, (Int, Ptr{Cvoid})), (run_raw_call, (Int, Ptr{Cvoid})),
        (call_args, (Ptr{Cvoid},)), (reply, (Ptr{Cvoid}, IOBuffer)),
        (register_builtin_handlers, (Ptr{Cvoid},)), (serve, ()), (shutdown, ()), (close_runtime!, ()),
        (shutdown_at_exit, ()),
        (myid, ()), (nprocs, ()), (nworkers, ()), (procs, ()), (workers, ()), (other_procs, ()), (other_workers, ()),
        (addprocs, (Int,)), (addprocs, ()), (launch, (Int, String, Vector{String}, Vector{String}, String)),
        (worker_command, (Nothing, Cmd)), (worker_env, (Vector{Any},)), (set_topology, (Symbol,)),
        (check_head, ()), (rmprocs, (Int,)), (rmprocs, (Vector{Int},)), (_rmprocs, (Vector{Int}, Int)),
        (interrupt, (Vector{Int},)), (interrupt, (Int,)),
        (CAPI.blocking, (Int32, Ptr{Cvoid}, Int, Ptr{CAPI.LaunchOptions}, Ptr{Int32})),
        (CAPI.blocking, (Int32, Ptr{Cvoid}, Ptr{Int32}, Int, Int64)),
        (CAPI.blocking, (Int32, Ptr{Cvoid}, Int64)),
        (CAPI.read_ids, (typeof(CAPI.cluster_procs), Ptr{Cvoid})),
        (CAPI.read_ids, (typeof(CAPI.cluster_workers), Ptr{Cvoid})),
        (send_call, (Ptr{Cvoid}, Int, String, IOBuffer)),
        (remotecall, (Function, Int)), (remotecall_fetch, (Function, Int)), (remotecall_wait, (Function, Int)),
        (remote_do, (Function, Int)),
        (fetch, (Future,)), (wait, (Future,)), (isready, (Future,)), (wait_ready, (Future,)),
        (take_outcome!, (Future,)), (check_failed!, (Future,)), (release!, (Future,)),
        (export_ref, (Future,)), (library_exception, (CAPI.ClusterError, Int)),
        (remotecall_eval, (Module, Vector{Int}, Expr)), (nextproc, ()),
        (remotecall_fetch_raw, (Int, String, Vector{UInt8})), (remotecall_fetch_raw, (Int, String, String)),
    )
    precompile(f, types)
end
precompile(Tuple{typeof(Core.kwfunc(remotecall)), NamedTuple{(),Tuple{}}, typeof(remotecall), Function, Int})
precompile(Tuple{typeof(Core.kwfunc(addprocs)), NamedTuple{(:exeflags,),Tuple{Cmd}}, typeof(addprocs), Int})
