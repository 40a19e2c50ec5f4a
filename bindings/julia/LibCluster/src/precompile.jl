# Compiling ahead. Julia 1.5 caches inferred code for the package but not
# native code, and Serialization's methods for an IOBuffer are not in the
# system image: the first call would spend about a second in the compiler.
# So the serialization paths are exercised (no C calls) at precompile time,
# and again at run time in the background (`warmup`): on the head while it
# waits for new workers, on a worker once it is ready.

# A call of a named function, and its reply.
function warmup_named_call()
    for args in ((), (1, 2.5), ("s", :x, nothing, true), ([1.0], [1], UInt8[1], (1, (2.0,))))
        decode_call(take!(encode_call(0, myid, args, pairs(NamedTuple()))))
    end
    for v in (1, 1.0, nothing, "s", [1.0], (1, 2))
        decode_reply(take!(encode_ok(v)), 2)
    end
end

# An anonymous function defined in Main (sent whole, with its code).
function warmup_closure()
    f = Core.eval(Main, :(x -> x + 1))
    decode_call(take!(encode_call(0, f, (1,), pairs(NamedTuple()))))
end

# A remote error.
warmup_error() = decode_reply(take!(encode_err(ErrorException("x"), backtrace())), 2)

# At run time only the common path: the others cost as much again.
const WARMUP_STAGES = (warmup_named_call,)

const WARMED_UP = Ref(false)

"""
    warmup(; until=() -> false)

Runs the warm-up stages once per process, yielding between stages and
stopping early when `until()` becomes true.
"""
function warmup(; until = () -> false)
    WARMED_UP[] && return
    WARMED_UP[] = true
    for stage in WARMUP_STAGES
        until() && return
        try
            Base.invokelatest(stage)
        catch
        end
        yield()
    end
end

function _precompile_workload()
    # Not stage 2: a package being precompiled cannot evaluate into Main.
    warmup_named_call()
    warmup_error()
    kw = pairs(NamedTuple())
    for (f, args) in ((identity, ("x",)), (sum, ([1.0, 2.0],)), (Core.eval, (Main, :(1 + 1)))),
        kwargs in (kw, pairs((a = 1,)))
        decode_call(take!(encode_call(0, f, args, kwargs)))
    end
    for v in (1.0, "s", [1.0, 2.0], [1, 2], (1, 2), Dict(1 => 2), :sym, true, Any[1, "a"])
        decode_reply(take!(encode_ok(v)), 2)
    end
    decode_reply(take!(encode_err(UndefVarError(:x), backtrace())), 2)
    # Nothing of these runs' caches is kept (object numbers and identities
    # are per session).
    foreach(empty!, (KNOWN_OBJECTS, FN_REFS, FN_TARGETS, CLOSURE_NUMBERS, CLOSURE_SENT, CLOSURE_TYPES,
                     STATIC_GLOBALS, GLOBALS_SENT))
    nothing
end

_precompile_workload()

for (f, types) in (
        (context, ()), (init, ()), (start!, (Symbol,)), (event_loop, ()),
        (poll!, (Vector{CAPI.Event}, Base.RefValue{Csize_t})), (handle_event, (CAPI.Event,)),
        (wake_waiters, (UInt64,)), (on_lifecycle, (Int, Int32)), (interrupt_running_calls, ()),
        (start_call, (Int, Ptr{Cvoid})), (run_call, (Int, Ptr{Cvoid})),
        (run_julia_call, (Int, Ptr{Cvoid})), (run_raw_call, (Int, Ptr{Cvoid})),
        (call_args, (Ptr{Cvoid},)), (reply, (Ptr{Cvoid}, IOBuffer)), (handler_entry, (Ptr{Cvoid}, Ptr{Cvoid})),
        (register_builtin_handlers, (Ptr{Cvoid},)), (serve, ()), (join_head, ()), (serve_joined, ()), (shutdown, ()), (close_runtime!, ()),
        (shutdown_at_exit, ()), (warmup, ()),
        (myid, ()), (nprocs, ()), (nworkers, ()), (procs, ()), (workers, ()), (other_procs, ()), (other_workers, ()),
        (addprocs, (Int,)), (addprocs, ()), (launch, (Int, String, Vector{String}, Vector{String}, String)),
        (worker_command, (Nothing, Cmd)), (worker_env, (Vector{Any},)), (set_topology, (Symbol, Bool)),
        (check_head, ()), (rmprocs, (Int,)), (rmprocs, (Vector{Int},)), (_rmprocs, (Vector{Int}, Int, Int)), (remove_locked, (Vector{Int}, Int, Int, Vector{Tuple{Int,WorkerState}})),
        (interrupt, (Vector{Int},)), (interrupt, (Int,)),
        (await_op, (Ptr{Cvoid},)), (await_ids, (Int32, Ptr{Cvoid})), (park_until_ready, (Ptr{Cvoid}, UInt64)),
        (drive_ready, (Future,)), (let_others_run, ()), (others_runnable, ()), (host_pending, ()),
        (next_window, (UInt64, UInt64)), (note_caller, (Int,)), (current_call, ()), (stats, ()),
        (function_ref, (Function,)), (read_function, (IOBuffer,)), (read_fast_call, (IOBuffer,)),
        (closure_type, (Function,)), (write_closure_call, (IOBuffer, Int, Function, Tuple{}, typeof(pairs(NamedTuple())))),
        (read_closure_call, (IOBuffer, Int)), (make_closure, (DataType, Vector{Any})), (closure_sent, (Int, UInt64)),
        (sent, (Int, IOBuffer)), (globals_to_send, (Int, Function, Tuple{})), (static_globals, (DataType,)),
        (cork!, (Ptr{Cvoid}, Ptr{Cvoid})), (uncork!, ()), (contention, ()), (involuntary_switches, ()),
        (call_latest, (Function, Vector{Any})), (scratch, ()), (bytes_hash, (Vector{UInt8}, Int, Int)),
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

# addprocs over SSH and Slurm (launchers.jl): the paths behind the keyword
# methods, whose keywords are made concrete first (SSHParams, SlurmParams).
for (f, types) in (
        (SSHManager, (Vector{String},)), (SSHManager, (Vector{Any},)), (merge_machines, (Vector{String},)),
        (addprocs, (Vector{String},)), (addprocs, (SSHManager,)), (addprocs, (SlurmManager,)),
        (ssh_addprocs, (SSHManager, SSHParams, Nothing)), (ssh_addprocs, (SSHManager, SSHParams, Dict{Symbol,Any})),
        (launch_ssh, (Vector{Pair{String,Union{Int,Symbol}}}, String, Vector{String}, Vector{String}, SSHParams)),
        (slurm_addprocs, (SlurmManager, SlurmParams, Nothing)),
        (launch_slurm, (SlurmManager, String, Vector{String}, Vector{String}, SlurmParams, Nothing)),
        (launch_slurm, (SlurmManager, String, Vector{String}, Vector{String}, SlurmParams, String)),
        (worker_command, (Nothing, Vector{String})), (worker_command, (String, Vector{String})),
        (worker_env, (Vector{String},)), (listen_beyond_loopback, ()), (head_address, ()),
        (with_listen_hint, (String,)), (c_strings, (String, Vector{String})), (timeout_ms, (Nothing,)),
        (timeout_ms, (Float64,)), (process_hosts, ()), (procs, (Int,)),
    )
    precompile(f, types)
end

# What the start and the waits use of FileWatching and Base (methods of
# other modules; cached here only where this Julia keeps them).
for (f, types) in (
        (FDWatcher, (RawFD, Bool, Bool)), (wait, (FDWatcher,)), (close, (FDWatcher,)),
        (get!, (Function, Dict{UInt64,Threads.Condition}, UInt64)), (pop!, (Dict{UInt64,Threads.Condition}, UInt64, Nothing)),
        (empty!, (Dict{UInt64,Threads.Condition},)), (setindex!, (Dict{Int,Symbol}, Symbol, Int)),
    )
    precompile(f, types)
end

# RemoteChannel (channels.jl), for its default and an Int element type.
for R in (RemoteChannel{Channel{Any}}, RemoteChannel{Channel{Int}})
    for (f, types) in (
            (put!, (R, Int)), (take!, (R,)), (fetch, (R,)), (wait, (R,)), (isready, (R,)),
            (isempty, (R,)), (isopen, (R,)), (close, (R,)), (bind, (R, Int)), (iterate, (R,)),
            (channel_state, (R,)), (export_channel, (R,)), (release!, (R,)),
        )
        precompile(f, types)
    end
end
for (f, types) in (
        (RemoteChannel, ()), (RemoteChannel, (Int,)), (wait_channel_future, (Ptr{Cvoid}, Int)),
        (drive_handle, (Ptr{Cvoid},)), (decode_element, (Vector{UInt8},)), (encode_element, (Int,)),
        (channel_count, ()),
    )
    precompile(f, types)
end

# ClusterDicts (clusterdicts/), for the default key and value types and Int.
let CDs = ClusterDicts
    for D in (CDs.GlobalDict{Any,Any}, CDs.DistributedDict{Any,Any}, CDs.GlobalDict{Int,Int}, CDs.DistributedDict{Int,Int})
        for (f, types) in (
                (getindex, (D, Int)), (get, (D, Int, Nothing)), (haskey, (D, Int)), (get!, (D, Int, Int)),
                (setindex!, (D, Int, Int)), (setindex!, (D, CDs.ValueF, Int)), (pop!, (D, Int)), (pop!, (D, Int, Nothing)),
                (delete!, (D, Int)), (delete!, (D,)), (length, (D,)), (isempty, (D,)), (keys, (D,)), (values, (D,)),
                (iterate, (D,)), (CDs.localpart, (D,)), (CDs.dict_members, (D,)), (CDs.handle_bytes, (D,)),
                (CDs.open_dict, (Type{D}, Vector{UInt8})), (CDs.free_handle!, (D,)),
                (serialize, (Serializer{IOBuffer}, D)), (deserialize, (Serializer{IOBuffer}, Type{D})),
            )
            precompile(f, types)
        end
    end
    for (f, types) in (
            (CDs.GlobalDict, ()), (CDs.DistributedDict, ()), (CDs.local_dicts, ()), (CDs.encode_bytes, (Int,)),
            (CDs.await_future, (Ptr{Cvoid},)), (CDs.valuef_bytes, (Function, Type{Any})),
        )
        precompile(f, types)
    end
end

# PTools' pfork (ptools/pfork.jl): the parent's path and what each child
# runs (compiled again at run time before the first fork, see child_entry).
let PT = PTools
    for (f, types) in (
            (PT.pfork, (Int, Function)), (PT.child_entry, ()), (PT.child_result, (Ptr{Cvoid}, Int)),
            (PT.what_happened, (String, Int, Int)), (PT.decode_fork_value, (Vector{UInt8},)),
            (PT.warm_result_types, (Vector{Any},)), (PT.precompile_call, (Function, Tuple{})),
            (PT.flush_buffered, (Base.TTY,)), (PT.flush_buffered, (Base.PipeEndpoint,)), (PT.flush_buffered, (IOStream,)),
            (PT.fork_child_entry, (Ptr{Cvoid}, Int32, Ptr{Cvoid})), (PT.replace_inherited_proc_mem, (Cint, Bool)),
            (PT.replace_event_backend, (Bool,)), (PT.run_fork_child, (PT.ForkJob, Int, Ptr{Cvoid})),
            (PT.call_latest, (Any, Int, Tuple)), (PT.fail_child, (Ptr{Cvoid}, String)),
            (PT.stacktrace_text, (Vector{Union{Ptr{Nothing}, Base.InterpreterIP}},)), (detach_fork_child!, ()),
            (PT.pfork_shm, (Int, Type, Tuple{Int}, Function)), (PT.shared_output, (Type, Tuple{Int})),
        )
        precompile(f, types)
    end
end
