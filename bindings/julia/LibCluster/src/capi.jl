# The raw C layer: finding and loading libcluster.so, the constants and
# structs of include/cluster.h, one thin wrapper per exported function, and
# turning a failed status into a Julia exception via cluster_last_error().
#
# Nothing above this file calls `ccall` directly. Every wrapper here returns
# at once: what can wait (addprocs, rmprocs, shutdown, the export of an
# imported future) is called in its `_async` form, which returns a future
# that a Julia task waits on like any other. LibCluster never blocks Julia's
# scheduler in a `ccall` and never starts a thread of its own.

module CAPI

import Libdl

# ---------------------------------------------------------------- constants

"The C API version this package was written for (major, minor)."
const WRITTEN_FOR = (0, 2)

const CLUSTER_ANY_WORKER = Int32(0)
const CLUSTER_FOREVER = Int64(-1)
const CLUSTER_HEAD = Int32(1)

# cluster_status
const CLUSTER_OK = Int32(0)
const CLUSTER_ERR_INVALID_ARGUMENT = Int32(1)
const CLUSTER_ERR_BAD_HANDLE = Int32(2)
const CLUSTER_ERR_NOT_HEAD = Int32(3)
const CLUSTER_ERR_NO_SUCH_PROCESS = Int32(4)
const CLUSTER_ERR_REMOTE = Int32(5)
const CLUSTER_ERR_PROCESS_EXITED = Int32(6)
const CLUSTER_ERR_INTERRUPTED = Int32(7)
const CLUSTER_ERR_TIMEOUT = Int32(8)
const CLUSTER_ERR_TOPOLOGY = Int32(9)
const CLUSTER_ERR_LAUNCH = Int32(10)
const CLUSTER_ERR_AUTH = Int32(11)
const CLUSTER_ERR_IO = Int32(12)
const CLUSTER_ERR_PROTOCOL = Int32(13)
const CLUSTER_ERR_TOO_LARGE = Int32(14)
const CLUSTER_ERR_SHUTDOWN = Int32(15)
const CLUSTER_ERR_PANIC = Int32(16)
const CLUSTER_ERR_NOT_READY = Int32(17)
const CLUSTER_ERR_COMPOSITE = Int32(18)
const CLUSTER_ERR_WRONG_MODE = Int32(19)
const CLUSTER_ERR_BUFFER_TOO_SMALL = Int32(20)
const CLUSTER_ERR_HEAD_LOST = Int32(21)
const CLUSTER_ERR_CHANNEL_CLOSED = Int32(22)
const CLUSTER_ERR_NOT_FOUND = Int32(23)
const CLUSTER_ERR_CORRUPT = Int32(24)

const STATUS_NAMES = Dict{Int32,Symbol}(
    0 => :CLUSTER_OK, 1 => :CLUSTER_ERR_INVALID_ARGUMENT, 2 => :CLUSTER_ERR_BAD_HANDLE,
    3 => :CLUSTER_ERR_NOT_HEAD, 4 => :CLUSTER_ERR_NO_SUCH_PROCESS, 5 => :CLUSTER_ERR_REMOTE,
    6 => :CLUSTER_ERR_PROCESS_EXITED, 7 => :CLUSTER_ERR_INTERRUPTED, 8 => :CLUSTER_ERR_TIMEOUT,
    9 => :CLUSTER_ERR_TOPOLOGY, 10 => :CLUSTER_ERR_LAUNCH, 11 => :CLUSTER_ERR_AUTH,
    12 => :CLUSTER_ERR_IO, 13 => :CLUSTER_ERR_PROTOCOL, 14 => :CLUSTER_ERR_TOO_LARGE,
    15 => :CLUSTER_ERR_SHUTDOWN, 16 => :CLUSTER_ERR_PANIC, 17 => :CLUSTER_ERR_NOT_READY,
    18 => :CLUSTER_ERR_COMPOSITE, 19 => :CLUSTER_ERR_WRONG_MODE, 20 => :CLUSTER_ERR_BUFFER_TOO_SMALL,
    21 => :CLUSTER_ERR_HEAD_LOST, 22 => :CLUSTER_ERR_CHANNEL_CLOSED,
    23 => :CLUSTER_ERR_NOT_FOUND,
    24 => :CLUSTER_ERR_CORRUPT)

# cluster_lifecycle
const CLUSTER_WORKER_STARTED = Int32(0)
const CLUSTER_WORKER_EXITED = Int32(1)
const CLUSTER_WORKER_DIED = Int32(2)

# cluster_log_level
const CLUSTER_LOG_OFF = Int32(0)
const CLUSTER_LOG_ERROR = Int32(1)
const CLUSTER_LOG_WARN = Int32(2)
const CLUSTER_LOG_INFO = Int32(3)
const CLUSTER_LOG_DEBUG = Int32(4)

# cluster_topology
const CLUSTER_TOPOLOGY_ALL_TO_ALL = Int32(0)
const CLUSTER_TOPOLOGY_MASTER_WORKER = Int32(1)

# cluster_tls
const CLUSTER_TLS_OFF = Int32(0)
# CROSS_HOST: the connections not on loopback.
const CLUSTER_TLS_CROSS_HOST = Int32(1)
const CLUSTER_TLS_ALWAYS = Int32(2)

# cluster_dispatch
const CLUSTER_DISPATCH_THREADS = Int32(0)
const CLUSTER_DISPATCH_HOST = Int32(1)

# cluster_service
const CLUSTER_SERVICE_CORE = Int32(0)
const CLUSTER_SERVICE_RPC = Int32(2)

# cluster_event_kind (CLUSTER_SERVICE_CORE)
const CLUSTER_EVENT_FUTURE_READY = Int32(0)
const CLUSTER_EVENT_WORKER_STARTED = Int32(1)
const CLUSTER_EVENT_WORKER_EXITED = Int32(2)
const CLUSTER_EVENT_WORKER_DIED = Int32(3)
const CLUSTER_EVENT_SHUTDOWN = Int32(4)
const CLUSTER_EVENT_HEAD_LOST = Int32(5)

# cluster_rpc_event_kind (CLUSTER_SERVICE_RPC)
const CLUSTER_EVENT_RPC_INTERRUPT = Int32(0)

# ------------------------------------------------------------------ structs
# Field for field the layout of include/cluster.h (x86_64 / aarch64 SysV).

"`cluster_config`. Immutable: fill with `config_init()` and rebuild with `with_fields`."
struct ClusterConfig
    struct_size::UInt32
    listen_host::Ptr{UInt8}
    cookie::Ptr{UInt8}
    join::Ptr{UInt8}
    topology::Int32
    dispatch::Int32
    handler_threads::UInt32
    startup_timeout_ms::UInt32
    max_message_bytes::UInt64
    spin_us::UInt32
    log_level::Int32
    exit_on_head_loss::Bool
    heartbeat_timeout_ms::UInt32
    handshake_timeout_ms::UInt32
    tls::Int32
end

"`cluster_launch_options`: every pointer borrowed for the duration of the call."
struct LaunchOptions
    program::Ptr{UInt8}
    argv::Ptr{Ptr{UInt8}}
    env::Ptr{Ptr{UInt8}}
    dir::Ptr{UInt8}
end

"`cluster_machine`: a Distributed machine spec and its worker count (or CLUSTER_COUNT_AUTO)."
struct Machine
    spec::Ptr{UInt8}
    count::Int32
end

const CLUSTER_COUNT_AUTO = Int32(-1)

"`cluster_ssh_options`: fill with `ssh_options_init()`; pointers borrowed for the call (copied)."
struct SshOptions
    struct_size::UInt32
    ssh::Ptr{UInt8}
    ssh_flags::Ptr{Ptr{UInt8}}
    max_parallel::Csize_t
    multiplex::Bool
    tunnel::Bool
    tolerate_failures::Bool
    head_addr::Ptr{UInt8}
    worker_listen::Ptr{UInt8}
    exename::Ptr{UInt8}
    argv::Ptr{Ptr{UInt8}}
    dir::Ptr{UInt8}
    env::Ptr{Ptr{UInt8}}
    startup_timeout_ms::UInt32
end

"`cluster_slurm_options`: fill with `slurm_options_init()`; pointers borrowed for the call (copied)."
struct SlurmOptions
    struct_size::UInt32
    srun::Ptr{UInt8}
    srun_args::Ptr{Ptr{UInt8}}
    srun_env::Ptr{Ptr{UInt8}}
    exename::Ptr{UInt8}
    argv::Ptr{Ptr{UInt8}}
    env::Ptr{Ptr{UInt8}}
    worker_listen::Ptr{UInt8}
    head_addr::Ptr{UInt8}
    startup_timeout_ms::UInt32
end

"`cluster_buffer`: bytes owned by the library until `cluster_buffer_free`."
mutable struct Buffer
    data::Ptr{UInt8}
    len::Csize_t
    handle::UInt64
end
Buffer() = Buffer(C_NULL, 0, 0)

"`cluster_future_ref`: what crosses to another process for a future."
struct FutureRef
    owner::Int32
    id::UInt64
end

"`cluster_channel_ref`: what crosses to another process for a channel."
struct ChannelRef
    owner::Int32
    id::UInt64
end

"`cluster_channel_state`, as `cluster_channel_query` reports it."
struct ChannelState
    n_avail::Csize_t
    capacity::Csize_t
    open::Bool
end

"`cluster_event`, as written by `cluster_poll`."
struct Event
    service::Int32
    kind::Int32
    id::UInt64
    pid::Int32
    status::Int32
end

"Copy of `c` with the named fields replaced."
function with_fields(c::T; kw...) where {T}
    vals = map(fieldnames(T)) do f
        haskey(kw, f) ? convert(fieldtype(T, f), kw[f]) : getfield(c, f)
    end
    T(vals...)
end

# ------------------------------------------------------------ the library

"Where the loaded library came from, and its dlopen handle."
const LIB_PATH = Ref{String}("")
const LIB_HANDLE = Ref{Ptr{Cvoid}}(C_NULL)

"Package root: bindings/julia/LibCluster."
const PKG_ROOT = normpath(joinpath(@__DIR__, ".."))

"""
    library_candidates() -> Vector{String}

Where `libcluster.so` is looked for: `\$LIBCLUSTER_PATH` (a file, or a
directory holding libcluster.so) when it is set, and nowhere else then;
otherwise the repository's `target/release` then `target/debug` (relative to
this package), then the system library path (`LD_LIBRARY_PATH`,
ld.so.cache) by the name `libcluster`.
"""
function library_candidates()
    c = String[]
    p = get(ENV, "LIBCLUSTER_PATH", "")
    if !isempty(p)
        # Asked for explicitly: that library or none.
        push!(c, isdir(p) ? joinpath(p, "libcluster." * Libdl.dlext) : p)
        return c
    end
    repo = normpath(joinpath(PKG_ROOT, "..", "..", ".."))
    for profile in ("release", "debug")
        push!(c, joinpath(repo, "target", profile, "libcluster." * Libdl.dlext))
    end
    push!(c, "libcluster")   # the system search path
    c
end

# Function pointers, filled by `load_library!`.
const FUNCS = Tuple{Symbol,Base.RefValue{Ptr{Cvoid}}}[]

"""
    @cfunc name(arg::T, ...)::R

Declares the C function `name` of libcluster: a pointer slot filled when the
library is loaded, and a Julia function of the same name calling through it.
"""
macro cfunc(sig)
    sig.head === :(::) || error("@cfunc: expected name(args...)::Ret")
    call, R = sig.args
    name = call.args[1]
    args = call.args[2:end]
    argnames = Symbol[a.args[1] for a in args]
    argtypes = Any[a.args[2] for a in args]
    fp = Symbol("fp_", name)
    quote
        const $(esc(fp)) = Ref{Ptr{Cvoid}}(C_NULL)
        push!(FUNCS, ($(QuoteNode(name)), $(esc(fp))))
        @inline function $(esc(name))($(map(esc, argnames)...))
            ccall($(esc(fp))[], $(esc(R)), ($(map(esc, argtypes)...),), $(map(esc, argnames)...))
        end
    end
end

# The C functions of include/cluster.h this file deliberately does not wrap
# (a test over the header checks that every function is wrapped below or
# listed here, and nothing else):
#   - the blocking forms: the package calls the `_async` form (or
#     `cluster_remotecall`) and waits on the future as a task, so a ccall
#     never blocks Julia's scheduler;
#   - objects the package builds in Julia over remote calls, carrying
#     serialized Julia values rather than bytes (WorkerSet, QueuedTasks,
#     server tasks, remote variables, pools and pmap, @everywhere, ValueF,
#     channel state, shared-memory specs), and batched dict sets, which
#     ClusterDicts does not have.
const NOT_WRAPPED_BLOCKING = (
    :cluster_addprocs, :cluster_addprocs_slurm, :cluster_addprocs_ssh, :cluster_allgather,
    :cluster_channel_bind, :cluster_channel_close, :cluster_channel_fetch, :cluster_channel_put,
    :cluster_channel_take, :cluster_channel_wait, :cluster_dict_create, :cluster_dict_delete,
    :cluster_dict_get, :cluster_dict_get_or_insert, :cluster_dict_haskey, :cluster_dict_length,
    :cluster_dict_list, :cluster_dict_pop, :cluster_dict_release, :cluster_dict_set,
    :cluster_dict_set_with, :cluster_everywhere, :cluster_future_wait, :cluster_pool_take,
    :cluster_remotecall_fetch, :cluster_remotecall_wait, :cluster_rmprocs, :cluster_serve,
    :cluster_shm_create, :cluster_shm_unlink, :cluster_shutdown,
    :cluster_taskqueue_prep_remotes, :cluster_vars_apply, :cluster_vars_get, :cluster_vars_set
)
const NOT_WRAPPED_BUILT_IN_JULIA = (
    :cluster_channel_isempty, :cluster_channel_isopen, :cluster_channel_isready,
    :cluster_dict_register_value_fn, :cluster_dict_set_many, :cluster_dict_set_many_async,
    :cluster_everywhere_async, :cluster_pmap_run, :cluster_pool_remote_do,
    :cluster_pool_remotecall, :cluster_pool_remotecall_fetch, :cluster_pool_remotecall_wait,
    :cluster_stask_state, :cluster_stasks_count, :cluster_stasks_free, :cluster_stasks_pids,
    :cluster_stasks_pmap, :cluster_stasks_pmap_async, :cluster_stasks_start,
    :cluster_stasks_start_async, :cluster_stasks_stop, :cluster_stasks_stop_async,
    :cluster_taskqueue_dequeue_if, :cluster_taskqueue_execute, :cluster_taskqueue_set_priority,
    :cluster_value_set, :cluster_vars_delete, :cluster_workerset_free, :cluster_workerset_new,
    :cluster_workerset_remotecall, :cluster_workerset_remotecall_fetch,
    :cluster_workerset_remotecall_wait
)

@cfunc cluster_version()::UInt32
@cfunc cluster_version_string()::Ptr{UInt8}
@cfunc cluster_status_str(status::Int32)::Ptr{UInt8}
@cfunc cluster_last_error()::Ptr{UInt8}
@cfunc cluster_last_error_pid()::Int32
@cfunc cluster_config_init(config::Ptr{ClusterConfig})::Int32
# Blocking on a worker (until joined): only called by `serve` at startup.
@cfunc cluster_init(config::Ptr{ClusterConfig}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_free(ctx::Ptr{Cvoid})::Int32
# Returns a future at once (completes once the workers are gone and the cluster closed).
@cfunc cluster_shutdown_async(ctx::Ptr{Cvoid}, timeout_ms::Int64, out::Ptr{Ptr{Cvoid}})::Int32
# Waits only for library callbacks running now (the notify hook: microseconds).
@cfunc cluster_close(ctx::Ptr{Cvoid}, timeout_ms::Int64)::Int32
@cfunc cluster_ready(ctx::Ptr{Cvoid})::Int32
@cfunc cluster_is_head(ctx::Ptr{Cvoid}, out::Ptr{Bool})::Int32
@cfunc cluster_cookie(ctx::Ptr{Cvoid}, buf::Ptr{UInt8}, cap::Csize_t, len::Ptr{Csize_t})::Int32
@cfunc cluster_address(ctx::Ptr{Cvoid}, buf::Ptr{UInt8}, cap::Csize_t, len::Ptr{Csize_t})::Int32
@cfunc cluster_myid(ctx::Ptr{Cvoid}, out::Ptr{Int32})::Int32
@cfunc cluster_nprocs(ctx::Ptr{Cvoid}, out::Ptr{Csize_t})::Int32
@cfunc cluster_nworkers(ctx::Ptr{Cvoid}, out::Ptr{Csize_t})::Int32
@cfunc cluster_procs(ctx::Ptr{Cvoid}, out::Ptr{Int32}, cap::Csize_t, count::Ptr{Csize_t})::Int32
@cfunc cluster_workers(ctx::Ptr{Cvoid}, out::Ptr{Int32}, cap::Csize_t, count::Ptr{Csize_t})::Int32
@cfunc cluster_other_procs(ctx::Ptr{Cvoid}, out::Ptr{Int32}, cap::Csize_t, count::Ptr{Csize_t})::Int32
@cfunc cluster_other_workers(ctx::Ptr{Cvoid}, out::Ptr{Int32}, cap::Csize_t, count::Ptr{Csize_t})::Int32
# Local: whether the connection to `pid` runs under TLS (NOT_READY: none yet).
@cfunc cluster_connection_encrypted(ctx::Ptr{Cvoid}, pid::Int32, out::Ptr{Bool})::Int32
# Futures at once: their values are the new ids (n little-endian Int32), or nothing.
@cfunc cluster_addprocs_async(ctx::Ptr{Cvoid}, n::Csize_t, options::Ptr{LaunchOptions}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_rmprocs_async(ctx::Ptr{Cvoid}, ids::Ptr{Int32}, n::Csize_t, timeout_ms::Int64, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_set_topology(ctx::Ptr{Cvoid}, topology::Int32)::Int32
@cfunc cluster_ssh_options_init(options::Ptr{SshOptions})::Int32
@cfunc cluster_slurm_options_init(options::Ptr{SlurmOptions})::Int32
# Futures at once (ssh / srun run on a library thread): their values are the new ids (little-endian Int32).
@cfunc cluster_addprocs_ssh_async(ctx::Ptr{Cvoid}, machines::Ptr{Machine}, n::Csize_t, options::Ptr{SshOptions},
                                  out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_addprocs_slurm_async(ctx::Ptr{Cvoid}, n::Csize_t, options::Ptr{SlurmOptions}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_set_lifecycle_callback(ctx::Ptr{Cvoid}, cb::Ptr{Cvoid}, user_data::Ptr{Cvoid})::Int32
@cfunc cluster_set_log_callback(ctx::Ptr{Cvoid}, cb::Ptr{Cvoid}, user_data::Ptr{Cvoid})::Int32
@cfunc cluster_set_log_level(ctx::Ptr{Cvoid}, level::Int32)::Int32
# user_data as an integer: a Ptr constant would not survive precompilation
# (pointers in cached code are saved as NULL).
@cfunc cluster_register(ctx::Ptr{Cvoid}, name::Cstring, handler::Ptr{Cvoid}, user_data::UInt)::Int32
@cfunc cluster_unregister(ctx::Ptr{Cvoid}, name::Cstring)::Int32
# Returns at once (writes the arguments to the socket before returning).
@cfunc cluster_remotecall(ctx::Ptr{Cvoid}, pid::Int32, name::Cstring, args::Ptr{UInt8}, len::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_remote_do(ctx::Ptr{Cvoid}, pid::Int32, name::Cstring, args::Ptr{UInt8}, len::Csize_t)::Int32
@cfunc cluster_interrupt(ctx::Ptr{Cvoid}, ids::Ptr{Int32}, n::Csize_t)::Int32
# Reads the future's reply connection on this thread for at most spin_us; never parks.
@cfunc cluster_future_drive(f::Ptr{Cvoid}, spin_us::UInt32, ready::Ptr{Bool})::Int32
@cfunc cluster_future_isready(f::Ptr{Cvoid}, out::Ptr{Bool})::Int32
# Only with timeout 0, on a future known to be complete.
@cfunc cluster_future_fetch(f::Ptr{Cvoid}, timeout_ms::Int64, data::Ptr{Ptr{UInt8}}, len::Ptr{Csize_t})::Int32
@cfunc cluster_future_error(f::Ptr{Cvoid}, pid::Ptr{Int32}, message::Ptr{Ptr{UInt8}})::Int32
@cfunc cluster_future_id(f::Ptr{Cvoid}, out::Ptr{UInt64})::Int32
@cfunc cluster_future_pid(f::Ptr{Cvoid}, out::Ptr{Int32})::Int32
# Only for futures this process owns (no round trip); an imported one is
# exported with cluster_future_export_async (a future of the 12-byte reference).
@cfunc cluster_future_export(f::Ptr{Cvoid}, out::Ptr{FutureRef})::Int32
@cfunc cluster_future_export_async(f::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_future_import(ctx::Ptr{Cvoid}, r::Ptr{FutureRef}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_future_free(f::Ptr{Cvoid})::Int32
@cfunc cluster_buffer_free(buf::Ptr{Cvoid})::Int32
@cfunc cluster_call_args(c::Ptr{Cvoid}, data::Ptr{Ptr{UInt8}}, len::Ptr{Csize_t})::Int32
@cfunc cluster_call_caller(c::Ptr{Cvoid}, out::Ptr{Int32})::Int32
@cfunc cluster_call_name(c::Ptr{Cvoid}, buf::Ptr{UInt8}, cap::Csize_t, len::Ptr{Csize_t})::Int32
@cfunc cluster_call_cancelled(c::Ptr{Cvoid}, out::Ptr{Bool})::Int32
@cfunc cluster_call_reply(c::Ptr{Cvoid}, data::Ptr{UInt8}, len::Csize_t)::Int32
@cfunc cluster_call_fail(c::Ptr{Cvoid}, message::Cstring)::Int32
@cfunc cluster_call_defer(c::Ptr{Cvoid})::Int32
@cfunc cluster_call_free(c::Ptr{Cvoid})::Int32
@cfunc cluster_event_fd(ctx::Ptr{Cvoid}, out::Ptr{Cint})::Int32
@cfunc cluster_set_notify(ctx::Ptr{Cvoid}, notify::Ptr{Cvoid}, user_data::Ptr{Cvoid})::Int32
@cfunc cluster_poll(ctx::Ptr{Cvoid}, events::Ptr{Event}, cap::Csize_t, count::Ptr{Csize_t})::Int32
# Reads the connection to `pid` on this thread for at most spin_us, until
# cluster_poll has work; never parks. Optional: older libraries lack it (see
# `has_drive`), and then incoming calls reach us through the notify hook only.
@cfunc cluster_drive(ctx::Ptr{Cvoid}, pid::Int32, spin_us::UInt32, pending::Ptr{Bool})::Int32
# cluster_drive that also says whether it served traffic (requests the
# library answered on this thread, e.g. dict reads). Optional, as cluster_drive.
@cfunc cluster_drive_ex(ctx::Ptr{Cvoid}, pid::Int32, spin_us::UInt32, pending::Ptr{Bool}, served::Ptr{Bool})::Int32

# Holds the replies this thread sends to `pid` until called again with
# `on` false (or for about a millisecond at most). Optional, as cluster_drive.
@cfunc cluster_cork(ctx::Ptr{Cvoid}, pid::Int32, on::Bool)::Int32

# ---------------------------------------------- task queue (PTools' queued tasks)

# cluster_task_target
const CLUSTER_TARGET_ANY = Int32(0)
const CLUSTER_TARGET_ALL = Int32(1)
const CLUSTER_TARGET_PIDS = Int32(2)
const CLUSTER_TARGET_HOSTS = Int32(3)

# cluster_task_queue
const CLUSTER_QUEUE_ANY = Int32(0)
const CLUSTER_QUEUE_PID = Int32(1)
const CLUSTER_QUEUE_HOST = Int32(2)

"`cluster_task_spec`: fill with `cluster_task_spec_init`; pointers borrowed for the call."
struct TaskSpec
    struct_size::UInt32
    name::Ptr{UInt8}
    args::Ptr{UInt8}
    len::Csize_t
    target::Int32
    pids::Ptr{Int32}
    npids::Csize_t
    hosts::Ptr{Ptr{UInt8}}
    nhosts::Csize_t
    priority::Float64
    callback::Ptr{Cvoid}
    user_data::Ptr{Cvoid}
end

"`cluster_task_info`: a queued entry, its strings borrowed for the callback."
struct TaskInfo
    id::UInt64
    name::Ptr{UInt8}
    queue::Int32
    pid::Int32
    host::Ptr{UInt8}
    priority::Float64
    queued_at::Float64
    all::Bool
end

@cfunc cluster_task_spec_init(spec::Ptr{TaskSpec})::Int32
@cfunc cluster_taskqueue_new(ctx::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
# A future at once (completes once every worker told its host name and address).
@cfunc cluster_taskqueue_prep_remotes_async(tq::Ptr{Cvoid}, force::Bool, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_taskqueue_num_remotes(tq::Ptr{Cvoid}, out::Ptr{Csize_t})::Int32
@cfunc cluster_taskqueue_queue(tq::Ptr{Cvoid}, spec::Ptr{TaskSpec}, id::Ptr{UInt64}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_taskqueue_dequeue(tq::Ptr{Cvoid}, id::UInt64, removed::Ptr{Bool})::Int32
# `calc` runs on this thread before this returns, without the queue's lock.
@cfunc cluster_taskqueue_set_priorities(tq::Ptr{Cvoid}, calc::Ptr{Cvoid}, user_data::Ptr{Cvoid})::Int32
@cfunc cluster_taskqueue_length(tq::Ptr{Cvoid}, queued::Ptr{Csize_t}, running::Ptr{Csize_t})::Int32
@cfunc cluster_taskqueue_free(tq::Ptr{Cvoid})::Int32
# Channels (RemoteChannel). Only the forms that never wait are called:
# every operation that may wait or needs a round trip goes through its
# `_async` form; `_isready`/`_isempty`/`_isopen`/`_export` are called only
# for a channel this process keeps (no round trip then).
@cfunc cluster_channel_new(ctx::Ptr{Cvoid}, pid::Int32, capacity::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
# Never blocks (the owner is told in the background): safe from a finalizer.
@cfunc cluster_channel_free(ch::Ptr{Cvoid})::Int32
@cfunc cluster_channel_pid(ch::Ptr{Cvoid}, out::Ptr{Int32})::Int32
@cfunc cluster_channel_count(ctx::Ptr{Cvoid}, out::Ptr{Csize_t})::Int32
@cfunc cluster_channel_put_async(ch::Ptr{Cvoid}, data::Ptr{UInt8}, len::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_channel_put_nowait(ch::Ptr{Cvoid}, data::Ptr{UInt8}, len::Csize_t)::Int32
@cfunc cluster_channel_take_async(ch::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_channel_fetch_async(ch::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_channel_wait_async(ch::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_channel_query_async(ch::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_channel_state_decode(data::Ptr{UInt8}, len::Csize_t, out::Ptr{ChannelState})::Int32
# Local (no round trip) only for a channel this process keeps.
@cfunc cluster_channel_query(ch::Ptr{Cvoid}, out::Ptr{ChannelState})::Int32
@cfunc cluster_channel_close_async(ch::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_channel_bind_async(ch::Ptr{Cvoid}, pid::Int32, out::Ptr{Ptr{Cvoid}})::Int32
# No round trip only when this process keeps the channel; otherwise the _async form.
@cfunc cluster_channel_export(ch::Ptr{Cvoid}, out::Ptr{ChannelRef})::Int32
@cfunc cluster_channel_export_async(ch::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_channel_import(ctx::Ptr{Cvoid}, r::Ptr{ChannelRef}, out::Ptr{Ptr{Cvoid}})::Int32
# ------------------------------------------------ pools, pmap, @distributed
# Everything here returns at once: takes, maps and @distributed are futures
# (`cluster_pool_take_async`, `cluster_pmap_future`) waited for in Julia.

@cfunc cluster_pool_new(ctx::Ptr{Cvoid}, pids::Ptr{Int32}, n::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_pool_default(ctx::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_pool_push(pool::Ptr{Cvoid}, pid::Int32)::Int32
@cfunc cluster_pool_put(pool::Ptr{Cvoid}, pid::Int32)::Int32
# A future of the worker's id (4 bytes little-endian).
@cfunc cluster_pool_take_async(pool::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_pool_length(pool::Ptr{Cvoid}, out::Ptr{Csize_t})::Int32
@cfunc cluster_pool_isready(pool::Ptr{Cvoid}, out::Ptr{Bool})::Int32
@cfunc cluster_pool_workers(pool::Ptr{Cvoid}, out::Ptr{Int32}, cap::Csize_t, count::Ptr{Csize_t})::Int32
@cfunc cluster_pool_free(pool::Ptr{Cvoid})::Int32

"`cluster_pmap_options`: pointers borrowed until `cluster_pmap_async` returns (it copies them)."
struct PmapOptions
    struct_size::UInt32
    batch_size::Csize_t
    on_error::Bool
    retry_delays_ms::Ptr{UInt32}
    retries::Csize_t
    retry_check::Ptr{Cvoid}
    retry_user_data::Ptr{Cvoid}
    progress::Ptr{Cvoid}
    progress_user_data::Ptr{Cvoid}
    progress_interval_ms::UInt32
    max_in_flight::UInt32
end

"`cluster_bytes`: bytes lent for the duration of a call."
struct Bytes
    data::Ptr{UInt8}
    len::Csize_t
end

"`cluster_range`: `first..=last`."
struct Range64
    first::Int64
    last::Int64
end

const CLUSTER_BATCH_AUTO = Csize_t(0)

@cfunc cluster_pmap_options_init(opts::Ptr{PmapOptions})::Int32
@cfunc cluster_pmap_async(ctx::Ptr{Cvoid}, pool::Ptr{Cvoid}, name::Cstring, items::Ptr{Bytes}, n::Csize_t,
                          opts::Ptr{PmapOptions}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_distributed_async(ctx::Ptr{Cvoid}, pool::Ptr{Cvoid}, name::Cstring, range::Range64, chunk::Csize_t,
                                 args::Ptr{UInt8}, len::Csize_t, opts::Ptr{PmapOptions}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_splitrange(range::Range64, np::Csize_t, out::Ptr{Range64}, cap::Csize_t, count::Ptr{Csize_t})::Int32
@cfunc cluster_pmap_future(pm::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
# Only with timeout 0 (just checks), once the map's future completed.
@cfunc cluster_pmap_wait(pm::Ptr{Cvoid}, timeout_ms::Int64)::Int32
@cfunc cluster_pmap_length(pm::Ptr{Cvoid}, out::Ptr{Csize_t})::Int32
@cfunc cluster_pmap_batch_size(pm::Ptr{Cvoid}, out::Ptr{Csize_t})::Int32
@cfunc cluster_pmap_result(pm::Ptr{Cvoid}, index::Csize_t, data::Ptr{Ptr{UInt8}}, len::Ptr{Csize_t})::Int32
@cfunc cluster_pmap_error(pm::Ptr{Cvoid}, index::Csize_t, pid::Ptr{Int32}, message::Ptr{Ptr{UInt8}})::Int32
@cfunc cluster_pmap_progress(pm::Ptr{Cvoid}, done::Ptr{Csize_t}, failed::Ptr{Csize_t})::Int32
@cfunc cluster_pmap_cancel(pm::Ptr{Cvoid})::Int32
@cfunc cluster_pmap_free(pm::Ptr{Cvoid})::Int32

# ------------------------------------------------ cluster dicts (ClusterDicts)
# Only forms that never wait are called: creation, every key operation,
# length, listings and release go through their `_async` form (the library
# retries those by itself after a member died); `cluster_dict_get_local`
# reads a GlobalDict member's own copy; `_open`, `_to_bytes`, `_name`,
# `_info`, `_members`, `_owner`, `_localpart`, `_local_names` and the
# listing accessors are local.

# cluster_dict_kind
const CLUSTER_DICT_GLOBAL = Int32(0)
const CLUSTER_DICT_DISTRIBUTED = Int32(1)

# cluster_dict_member_set
const CLUSTER_MEMBERS_WORKERS = Int32(0)
const CLUSTER_MEMBERS_ALL = Int32(1)
const CLUSTER_MEMBERS_PIDS = Int32(2)

# cluster_dict_listing
const CLUSTER_DICT_KEYS = Int32(0)
const CLUSTER_DICT_VALUES = Int32(1)
const CLUSTER_DICT_PAIRS = Int32(2)

# The header's CLUSTER_DICT_EACH: the built-in value function storing a
# value computed beforehand for each process (a string, hence no CLUSTER_
# prefix here: capi.jl's CLUSTER_ constants are the header's integers).
const DICT_EACH = "cluster.each"

"`cluster_dict_spec`: fill with `cluster_dict_spec_init`; pointers borrowed for the call."
struct DictSpec
    name::Ptr{UInt8}
    kind::Int32
    members::Int32
    pids::Ptr{Int32}
    npids::Csize_t
    replication::UInt32
    type_tag::Ptr{UInt8}
    type_tag_len::Csize_t
end

@cfunc cluster_dict_spec_init(spec::Ptr{DictSpec})::Int32
# A future at once: its value is the handle's bytes (cluster_dict_open).
@cfunc cluster_dict_create_async(ctx::Ptr{Cvoid}, spec::Ptr{DictSpec}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_open(ctx::Ptr{Cvoid}, data::Ptr{UInt8}, len::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_to_bytes(d::Ptr{Cvoid}, out::Ref{Buffer})::Int32
@cfunc cluster_dict_free(d::Ptr{Cvoid})::Int32
@cfunc cluster_dict_name(d::Ptr{Cvoid}, buf::Ptr{UInt8}, cap::Csize_t, len::Ptr{Csize_t})::Int32
@cfunc cluster_dict_info(d::Ptr{Cvoid}, kind::Ptr{Int32}, replication::Ptr{UInt32})::Int32
@cfunc cluster_dict_members(d::Ptr{Cvoid}, ids::Ptr{Int32}, cap::Csize_t, count::Ptr{Csize_t})::Int32
@cfunc cluster_dict_owner(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, pid::Ptr{Int32})::Int32
# Never waits: `held` false when this process is no member of a global dict.
@cfunc cluster_dict_get_local(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, held::Ptr{Bool}, out::Ref{Buffer})::Int32
@cfunc cluster_dict_set_async(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, value::Ptr{UInt8}, vlen::Csize_t,
                              out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_set_with_async(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, fname::Cstring, args::Ptr{UInt8},
                                   len::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_get_async(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_haskey_async(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_get_or_insert_async(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, default::Ptr{UInt8},
                                        dlen::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_pop_async(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_delete_async(d::Ptr{Cvoid}, key::Ptr{UInt8}, klen::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
# Its value: the length, a UInt64 little-endian.
@cfunc cluster_dict_length_async(d::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
# Its value is read with cluster_dict_entries_decode (the same `what`).
@cfunc cluster_dict_list_async(d::Ptr{Cvoid}, what::Int32, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_entries_decode(data::Ptr{UInt8}, len::Csize_t, what::Int32, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_localpart(d::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_release_async(d::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_local_names(ctx::Ptr{Cvoid}, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_dict_entries_count(e::Ptr{Cvoid}, count::Ptr{Csize_t})::Int32
@cfunc cluster_dict_entries_get(e::Ptr{Cvoid}, i::Csize_t, key::Ptr{Ptr{UInt8}}, klen::Ptr{Csize_t},
                                value::Ptr{Ptr{UInt8}}, vlen::Ptr{Csize_t})::Int32
@cfunc cluster_dict_entries_free(e::Ptr{Cvoid})::Int32

# ------------------------------------- shared memory (PTools' ShmCfg & co)
# Creation and unlinking go through their `_async` forms (a round trip to
# every local process); `cluster_shm_find`, `_data`, `_info`, `_os_name`,
# `_free` and the orphan listing are local (no process is asked).

# cluster_elem_type
const CLUSTER_ELEM_OPAQUE = Int32(0)
const CLUSTER_ELEM_U8 = Int32(1)
const CLUSTER_ELEM_I8 = Int32(2)
const CLUSTER_ELEM_U16 = Int32(3)
const CLUSTER_ELEM_I16 = Int32(4)
const CLUSTER_ELEM_U32 = Int32(5)
const CLUSTER_ELEM_I32 = Int32(6)
const CLUSTER_ELEM_U64 = Int32(7)
const CLUSTER_ELEM_I64 = Int32(8)
const CLUSTER_ELEM_F32 = Int32(9)
const CLUSTER_ELEM_F64 = Int32(10)
const CLUSTER_ELEM_BOOL = Int32(11)
const CLUSTER_ELEM_COMPLEX64 = Int32(12)
const CLUSTER_ELEM_COMPLEX128 = Int32(13)

"`cluster_shm_spec`: pointers borrowed for the call (the library copies them)."
struct ShmSpec
    name::Ptr{UInt8}
    prefix::Ptr{UInt8}
    elem_type::Int32
    elem_size::UInt32
    dims::Ptr{UInt64}
    ndims::Csize_t
end

# A future at once (the segment is made and reserved on this thread); its
# value is the /dev/shm name, once every process of `pids` (NULL: every
# local one) mapped it.
@cfunc cluster_shm_create_async(ctx::Ptr{Cvoid}, spec::Ptr{ShmSpec}, pids::Ptr{Int32}, npids::Csize_t,
                                out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_shm_find(ctx::Ptr{Cvoid}, name::Cstring, prefix::Cstring, out::Ptr{Ptr{Cvoid}})::Int32
# Never blocks (unmaps when it was the last handle): safe from a finalizer.
@cfunc cluster_shm_free(s::Ptr{Cvoid})::Int32
@cfunc cluster_shm_data(s::Ptr{Cvoid}, data::Ptr{Ptr{Cvoid}}, len::Ptr{Csize_t})::Int32
@cfunc cluster_shm_info(s::Ptr{Cvoid}, elem_type::Ptr{Int32}, elem_size::Ptr{UInt32}, dims::Ptr{UInt64}, cap::Csize_t,
                        ndims::Ptr{Csize_t})::Int32
@cfunc cluster_shm_os_name(s::Ptr{Cvoid}, buf::Ptr{UInt8}, cap::Csize_t, len::Ptr{Csize_t})::Int32
# A future at once (the name is gone from /dev/shm when it returns); it
# completes once every process dropped its mapping.
@cfunc cluster_shm_unlink_async(ctx::Ptr{Cvoid}, name::Cstring, prefix::Cstring, out::Ptr{Ptr{Cvoid}})::Int32
# Read /dev/shm and /proc only; `prefix` C_NULL: every prefix.
@cfunc cluster_shm_orphans(prefix::Cstring, out::Ref{Buffer}, count::Ptr{Csize_t})::Int32
@cfunc cluster_shm_remove_orphans(prefix::Cstring, out::Ref{Buffer}, count::Ptr{Csize_t})::Int32

# ----------------------------------------------------- fork (PTools' pfork)
# The one blocking call LibCluster makes: `cluster_pfork` waits (no
# network: pipes and pidfds of its own children) until every child has
# ended and been reaped, at most about `timeout_ms`. Only `PTools.pfork`
# calls it. `cluster_fork_return` / `_fail` are the child's side (its
# `cluster_fork_child` is valid only there); the results are local reads.

# cluster_fork_outcome
const CLUSTER_FORK_RETURNED = Int32(0)
const CLUSTER_FORK_FAILED = Int32(1)
const CLUSTER_FORK_EXITED = Int32(2)
const CLUSTER_FORK_SIGNALED = Int32(3)
const CLUSTER_FORK_TIMED_OUT = Int32(4)
const CLUSTER_FORK_NO_RESULT = Int32(5)
const CLUSTER_FORK_NOT_STARTED = Int32(6)

@cfunc cluster_pfork(n::Int32, f::Ptr{Cvoid}, user_data::Ptr{Cvoid}, timeout_ms::Int64, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_fork_return(child::Ptr{Cvoid}, data::Ptr{UInt8}, len::Csize_t)::Int32
@cfunc cluster_fork_fail(child::Ptr{Cvoid}, message::Cstring)::Int32
@cfunc cluster_fork_results_count(r::Ptr{Cvoid}, count::Ptr{Csize_t})::Int32
@cfunc cluster_fork_results_get(r::Ptr{Cvoid}, index::Csize_t, data::Ptr{Ptr{UInt8}}, len::Ptr{Csize_t})::Int32
@cfunc cluster_fork_results_child(r::Ptr{Cvoid}, index::Csize_t, outcome::Ptr{Int32}, code::Ptr{Int32},
                                  os_pid::Ptr{Int32}, message::Ptr{Ptr{UInt8}})::Int32
@cfunc cluster_fork_results_free(r::Ptr{Cvoid})::Int32

# ------------------------- ClusterUtils: hosts, remote variables, all-gather, files
# Results holding one byte string per process ("parts": pid u32 LE, length
# u64 LE, bytes, repeated) are walked with `cluster_parts_next`. Only the
# forms that never wait on the network are wrapped: `cluster_vars_set`,
# `_get`, `_apply`, `_delete` and `cluster_allgather` block, their `_async`
# forms do not. `cluster_save` / `cluster_load` touch a local file only
# (`cluster_save` fsyncs it and its directory).

@cfunc cluster_parts_next(data::Ptr{UInt8}, len::Csize_t, offset::Ptr{Csize_t}, pid::Ptr{Int32},
                          part::Ptr{Ptr{UInt8}}, part_len::Ptr{Csize_t})::Int32
# Local: the host names travel with membership.
@cfunc cluster_host_of(ctx::Ptr{Cvoid}, pid::Int32, out::Ref{Buffer})::Int32
@cfunc cluster_hosts(ctx::Ptr{Cvoid}, out::Ref{Buffer})::Int32
@cfunc cluster_vars_set_async(ctx::Ptr{Cvoid}, pids::Ptr{Int32}, npids::Csize_t, name::Cstring, value::Ptr{UInt8},
                              len::Csize_t, out::Ptr{Ptr{Cvoid}})::Int32
# A future whose value is in the parts layout, in the order of `pids`.
@cfunc cluster_vars_get_async(ctx::Ptr{Cvoid}, pids::Ptr{Int32}, npids::Csize_t, name::Cstring,
                              out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_vars_apply_async(ctx::Ptr{Cvoid}, pids::Ptr{Int32}, npids::Csize_t, name::Cstring, fname::Cstring,
                                keep_as::Cstring, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_vars_local_get(ctx::Ptr{Cvoid}, name::Cstring, out::Ref{Buffer})::Int32
@cfunc cluster_vars_local_set(ctx::Ptr{Cvoid}, name::Cstring, value::Ptr{UInt8}, len::Csize_t)::Int32
# A future whose value is every participant's data (parts layout, order of `pids`).
@cfunc cluster_allgather_async(ctx::Ptr{Cvoid}, pids::Ptr{Int32}, npids::Csize_t, tag::UInt64, data::Ptr{UInt8},
                               len::Csize_t, timeout_ms::Int64, out::Ptr{Ptr{Cvoid}})::Int32
@cfunc cluster_save(path::Cstring, content_type::Cstring, data::Ptr{UInt8}, len::Csize_t)::Int32
@cfunc cluster_load(path::Cstring, data::Ref{Buffer}, content_type::Ref{Buffer})::Int32

"""
    parts(bytes) -> Vector{Pair{Int,Vector{UInt8}}}

The (pid => bytes) of a result in the parts layout, in its order (walked
with `cluster_parts_next`, which refuses a damaged layout).
"""
function parts(bytes::Vector{UInt8})
    out = Pair{Int,Vector{UInt8}}[]
    offset = Ref{Csize_t}(0)
    pid = Ref{Int32}(0)
    part = Ref{Ptr{UInt8}}(C_NULL)
    plen = Ref{Csize_t}(0)
    GC.@preserve bytes while true
        st = cluster_parts_next(pointer(bytes), Csize_t(length(bytes)), offset, pid, part, plen)
        st == CLUSTER_ERR_NOT_FOUND && break
        check(st)
        n = Int(plen[])
        push!(out, Int(pid[]) => (n == 0 ? UInt8[] : copy(unsafe_wrap(Array, part[], n))))
    end
    out
end

"The bytes of a filled `Buffer`, copied; the buffer is freed."
function take_buffer!(buf::Buffer)
    n = Int(buf.len)
    v = n == 0 ? UInt8[] : copy(unsafe_wrap(Array, buf.data, n))
    GC.@preserve buf cluster_buffer_free(Ptr{Cvoid}(pointer_from_objref(buf)))
    v
end

"Default SSH launch options, from `cluster_ssh_options_init`."
function ssh_options_init()
    r = Ref{SshOptions}()
    check(cluster_ssh_options_init(r))
    r[]
end

"Default Slurm launch options, from `cluster_slurm_options_init`."
function slurm_options_init()
    r = Ref{SlurmOptions}()
    check(cluster_slurm_options_init(r))
    r[]
end

"Default pmap options, from `cluster_pmap_options_init`."
function pmap_options_init()
    r = Ref{PmapOptions}()
    check(cluster_pmap_options_init(r))
    r[]
end

"""
    free_once!(free, obj)

Frees `obj.handle` with `free` (a `cluster_*_free`) and clears it: once,
never blocking, safe from a finalizer (nothing is called once the library
is unloaded).
"""
@inline function free_once!(free::F, obj) where {F}
    h = obj.handle
    if h != C_NULL
        obj.handle = C_NULL
        LIB_HANDLE[] != C_NULL && free(h)
    end
    nothing
end

"Functions a library may lack; their pointer stays C_NULL then."
const OPTIONAL = (:cluster_drive, :cluster_cork, :cluster_drive_ex)

"Whether the library has `cluster_drive`."
has_drive() = fp_cluster_drive[] != C_NULL

"Whether the library has `cluster_drive_ex`."
has_drive_ex() = fp_cluster_drive_ex[] != C_NULL

"Whether the library has `cluster_cork`."
has_cork() = fp_cluster_cork[] != C_NULL

"""
    load_library!()

Finds and opens libcluster, resolves every function and checks the runtime
version. Throws an error listing every place it looked if none worked.
"""
function load_library!()
    LIB_HANDLE[] != C_NULL && return LIB_PATH[]
    tried = String[]
    handle = C_NULL
    path = ""
    for cand in library_candidates()
        if cand != "libcluster" && !isfile(cand)
            push!(tried, "$cand (no such file)")
            continue
        end
        h = Libdl.dlopen(cand, Libdl.RTLD_NOW | Libdl.RTLD_LOCAL; throw_error = false)
        if h === nothing || h == C_NULL
            push!(tried, cand == "libcluster" ? "libcluster.$(Libdl.dlext) on the system library path (not found)" :
                                                "$cand (dlopen failed)")
            continue
        end
        handle, path = h, cand
        break
    end
    if handle == C_NULL
        error("LibCluster: cannot find libcluster.$(Libdl.dlext). Looked at:\n  " *
              join(tried, "\n  ") *
              "\nBuild it with `cargo build --release` in the repository, or set LIBCLUSTER_PATH " *
              "to the library file or its directory.")
    end
    missing_syms = String[]
    for (name, slot) in FUNCS
        p = Libdl.dlsym(handle, name; throw_error = false)
        if p === nothing || p == C_NULL
            name in OPTIONAL ? (slot[] = C_NULL) : push!(missing_syms, String(name))
        else
            slot[] = p
        end
    end
    if !isempty(missing_syms)
        error("LibCluster: $(path) lacks $(join(missing_syms, ", ")); it is not a libcluster " *
              "$(WRITTEN_FOR[1]).$(WRITTEN_FOR[2]).x library")
    end
    v = cluster_version()
    if !version_compatible(v)
        error("LibCluster: $(path) is libcluster $(version_string()); this package was written " *
              "for $(WRITTEN_FOR[1]).$(WRITTEN_FOR[2]).x")
    end
    LIB_HANDLE[] = handle
    LIB_PATH[] = Libdl.dlpath(handle)
    return LIB_PATH[]
end

"""
    version_compatible(v::UInt32) -> Bool

Whether a library reporting `cluster_version() == v` can be used: the same
major version, and a minor version at least the one this package was
written for (minor versions only add).
"""
version_compatible(v::Integer) = Int(v >> 16) == WRITTEN_FOR[1] && Int((v >> 8) & 0xff) >= WRITTEN_FOR[2]

version_string() = unsafe_string(cluster_version_string())
library_version() = (v = cluster_version(); VersionNumber(Int(v >> 16), Int((v >> 8) & 0xff), Int(v & 0xff)))

# ------------------------------------------------------------------- errors

"""
    ClusterError(status, message, pid)

A libcluster call failed with `status` (a `cluster_status` value); `message`
is `cluster_last_error()` and `pid` the process it concerns (0 if none).
The Distributed-style exceptions (`RemoteException`, `ProcessExitedException`)
are made from these one layer up.
"""
struct ClusterError <: Exception
    status::Int32
    msg::String
    pid::Int
end

status_name(s::Integer) = get(STATUS_NAMES, Int32(s), Symbol("status_", s))
status_text(s::Integer) = unsafe_string(cluster_status_str(Int32(s)))

function Base.showerror(io::IO, e::ClusterError)
    print(io, "ClusterError(", status_name(e.status), "): ", isempty(e.msg) ? status_text(e.status) : e.msg)
end

"The error of the last failed call on this thread, as a `ClusterError`."
function last_error(status::Integer)
    msg = unsafe_string(cluster_last_error())
    ClusterError(Int32(status), msg, Int(cluster_last_error_pid()))
end

"Throws the `ClusterError` for `status` unless it is CLUSTER_OK."
@inline function check(status::Int32)
    status == CLUSTER_OK || throw(last_error(status))
    nothing
end

"Reads an id list (`cluster_procs` and friends), sizing the buffer as needed."
function read_ids(fn, ctx::Ptr{Cvoid})
    buf = Vector{Int32}(undef, 16)
    count = Ref{Csize_t}(0)
    while true
        st = fn(ctx, pointer(buf), Csize_t(length(buf)), count)
        if st == CLUSTER_ERR_BUFFER_TOO_SMALL
            resize!(buf, Int(count[]) + 16)
            continue
        end
        check(st)
        return Int[buf[i] for i in 1:Int(count[])]
    end
end

"Reads a string (`cluster_cookie`, `cluster_address`, `cluster_call_name`)."
function read_string(fn, h::Ptr{Cvoid})
    buf = Vector{UInt8}(undef, 128)
    len = Ref{Csize_t}(0)
    while true
        st = fn(h, pointer(buf), Csize_t(length(buf)), len)
        if st == CLUSTER_ERR_BUFFER_TOO_SMALL
            resize!(buf, Int(len[]) + 1)
            continue
        end
        check(st)
        return String(buf[1:Int(len[])])
    end
end

"Default configuration, from `cluster_config_init`."
function config_init()
    r = Ref{ClusterConfig}()
    check(cluster_config_init(r))
    r[]
end

end # module CAPI
