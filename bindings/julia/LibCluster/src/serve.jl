# Serving calls: the handlers LibCluster registers, running each incoming
# call as a Julia task, interrupts, and a worker's serve loop.
#
# Handlers run inside `cluster_poll` (host dispatch), on Julia's thread. They
# only defer the call (`cluster_call_defer`) and queue it; the event loop
# then starts one task per call, which replies (or fails) and frees it.
# Every process serves: the head too can be called by its workers.

const KIND_CALL = 1
const KIND_DO = 2
const FIRST_RAW_KIND = 16

const HANDLER_PTR = Ref{Ptr{Cvoid}}(C_NULL)

# Raw functions registered by name: kind => (name, f).
const RAW_HANDLERS = Dict{Int,Tuple{String,Any}}()
const RAW_KINDS = Dict{String,Int}()

function handler_entry(ud::Ptr{Cvoid}, call::Ptr{Cvoid})::Int32
    try
        st = CAPI.cluster_call_defer(call)
        st == CAPI.CLUSTER_OK || return st
        push!(RT.incoming, (Int(UInt(ud)), call))
        return CAPI.CLUSTER_OK
    catch
        return CAPI.CLUSTER_ERR_PANIC
    end
end

function init_handlers!()
    HANDLER_PTR[] = @cfunction(handler_entry, Int32, (Ptr{Cvoid}, Ptr{Cvoid}))
    nothing
end

function register_builtin_handlers(ctx::Ptr{Cvoid})
    CAPI.check(CAPI.cluster_register(ctx, CALL_FN, HANDLER_PTR[], UInt(KIND_CALL)))
    CAPI.check(CAPI.cluster_register(ctx, DO_FN, HANDLER_PTR[], UInt(KIND_DO)))
    CAPI.check(CAPI.cluster_register(ctx, MAP_FN, HANDLER_PTR[], UInt(KIND_MAP)))    # pmap.jl
    CAPI.check(CAPI.cluster_register(ctx, DFOR_FN, HANDLER_PTR[], UInt(KIND_DFOR)))
    for (kind, (name, _)) in RAW_HANDLERS
        CAPI.check(CAPI.cluster_register(ctx, name, HANDLER_PTR[], UInt(kind)))
    end
end

"""
    LibCluster.register(f, name)

Registers `f(bytes::Vector{UInt8}, caller::Int)` under `name` in this
process, for callers that call by name with raw bytes (C programs through
`cluster_remotecall`, or [`remotecall_fetch_raw`](@ref)). `f` returns the reply
as bytes (`AbstractVector{UInt8}` or `String`; `nothing` for none); an
exception fails the call with its message.
"""
function register(f, name::AbstractString)
    name = String(name)
    (name == CALL_FN || name == DO_FN || name == MAP_FN || name == DFOR_FN) && throw(ArgumentError("$name is reserved by LibCluster"))
    kind = get(RAW_KINDS, name, 0)
    if kind == 0
        kind = FIRST_RAW_KIND + length(RAW_KINDS)
        while haskey(RAW_HANDLERS, kind)
            kind += 1
        end
        RAW_KINDS[name] = kind
    end
    RAW_HANDLERS[kind] = (name, f)
    CAPI.check(CAPI.cluster_register(context(), name, HANDLER_PTR[], UInt(kind)))
    nothing
end

register(name::AbstractString, f) = register(f, name)

"Removes the function registered as `name`; later calls to it fail remotely."
function unregister(name::AbstractString)
    name = String(name)
    kind = pop!(RAW_KINDS, name, 0)
    kind == 0 || delete!(RAW_HANDLERS, kind)
    CAPI.check(CAPI.cluster_unregister(context(), name))
    nothing
end

# ----------------------------------------------------------- running calls

function start_call(kind::Int, call::Ptr{Cvoid})
    # Elements of maps: no task each, one runs them all (pmap.jl).
    (kind == KIND_MAP || kind == KIND_DFOR) && return queue_map_call(kind, call)
    count!(STAT_CALLS)
    t = Task(() -> run_call(kind, call))
    RT.running[call] = t
    schedule(t)
    nothing
end

"The call the current task serves, or `nothing`."
function current_call()
    t = current_task()
    for (c, task) in RT.running
        task === t && return c
    end
    nothing
end

"The caller's process id, inside a call being served (else `nothing`)."
function current_caller()
    c = current_call()
    c === nothing && return nothing
    out = Ref{Int32}(0)
    CAPI.cluster_call_caller(c::Ptr{Cvoid}, out) == CAPI.CLUSTER_OK ? Int(out[]) : nothing
end

"""
    LibCluster.interrupted() -> Bool

Inside a call being served: whether the caller's process interrupted it
(`interrupt`). A long computation that does not yield can poll this and
stop early.
"""
function interrupted()
    c = current_call()
    c === nothing && return false
    out = Ref(false)
    CAPI.cluster_call_cancelled(c::Ptr{Cvoid}, out) == CAPI.CLUSTER_OK && out[]
end

function call_args(call::Ptr{Cvoid})
    data = Ref{Ptr{UInt8}}(C_NULL)
    len = Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_call_args(call, data, len))
    n = Int(len[])
    # Valid until the call is answered or freed.
    n == 0 ? UInt8[] : unsafe_wrap(Array, data[], n)
end

function reply(call::Ptr{Cvoid}, io::IOBuffer)
    GC.@preserve io CAPI.cluster_call_reply(call, pointer(io.data), Csize_t(io.size))
end

function run_call(kind::Int, call::Ptr{Cvoid})
    try
        if kind == KIND_CALL || kind == KIND_DO
            run_julia_call(kind, call)
        else
            run_raw_call(kind, call)
        end
    catch err
        # Never leave a caller waiting: fail the call with what went wrong.
        msg = "LibCluster internal error on process $(RT.myid): " * safe_showerror(err)
        CAPI.cluster_call_fail(call, msg)
    finally
        delete!(RT.running, call)
        CAPI.cluster_call_free(call)
    end
    nothing
end

"`f(args...)` in the latest world; the commonest arities without building a tuple."
function call_latest(@nospecialize(f), args::Vector{Any})
    n = length(args)
    n == 0 && return Base.invokelatest(f)
    n == 1 && return Base.invokelatest(f, @inbounds(args[1]))
    n == 2 && return Base.invokelatest(f, @inbounds(args[1]), @inbounds(args[2]))
    n == 3 && return Base.invokelatest(f, @inbounds(args[1]), @inbounds(args[2]), @inbounds(args[3]))
    Base.invokelatest(f, args...)
end

# The event loop reads this caller's connection while idle (`cluster_drive`).
@inline note_caller(pid::Int) = (pid != RT.myid && (RT.last_peer = pid); nothing)

function run_julia_call(kind::Int, call::Ptr{Cvoid})
    bytes = call_args(call)
    caller = Ref{Int32}(0)
    CAPI.cluster_call_caller(call, caller)
    note_caller(Int(caller[]))
    out = try
        f, args, kw = decode_call(bytes, caller[])
        v = isempty(kw) ? call_latest(f, args) : Base.invokelatest(f, args...; kw...)
        kind == KIND_DO ? nothing : encode_ok(v)
    catch err
        bt = catch_backtrace()
        if kind == KIND_DO
            Base.invokelatest(print_remote_do_error, err, bt)
            nothing
        else
            Base.invokelatest(encode_err, err, bt)::IOBuffer
        end
    end
    if out === nothing
        CAPI.cluster_call_reply(call, C_NULL, 0)
    else
        reply(call, out)
    end
end

function print_remote_do_error(err, bt)
    try
        msg = sprint() do io
            print(io, "Error in remote_do on process ", RT.myid, ": ")
            showerror(io, err)
            Base.show_backtrace(io, portable_backtrace(bt))
            println(io)
        end
        print(stderr, msg)
    catch
    end
end

function run_raw_call(kind::Int, call::Ptr{Cvoid})
    entry = get(RAW_HANDLERS, kind, nothing)
    if entry === nothing
        CAPI.cluster_call_fail(call, "function is not registered on process $(RT.myid)")
        return
    end
    name, f = entry
    caller = Ref{Int32}(0)
    CAPI.cluster_call_caller(call, caller)
    note_caller(Int(caller[]))
    bytes = copy(call_args(call))
    v = try
        Base.invokelatest(f, bytes, Int(caller[]))
    catch err
        CAPI.cluster_call_fail(call, "$name: " * safe_showerror(err))
        return
    end
    if v === nothing
        CAPI.cluster_call_reply(call, C_NULL, 0)
    else
        with_bytes(v) do p, n
            CAPI.cluster_call_reply(call, p, n)
        end
    end
end

# Called by the event loop for CLUSTER_EVENT_INTERRUPT.
function interrupt_running_calls()
    for (call, t) in collect(RT.running)
        c = Ref(false)
        CAPI.cluster_call_cancelled(call, c) == CAPI.CLUSTER_OK || continue
        if c[] && !istaskdone(t) && t !== current_task()
            try
                schedule(t, InterruptException(); error = true)
            catch
            end
        end
    end
end

# ----------------------------------------------------------- worker loop

# As a Distributed worker (`enable_threaded_blas = false`): BLAS on one
# thread, through the hook LinearAlgebra registers for this.
function single_threaded_blas()
    isdefined(Base, :disable_library_threading) || return
    try
        Base.disable_library_threading()
    catch err
        @warn "LibCluster: could not make BLAS single-threaded" exception = err
    end
end

"""
    LibCluster.serve()

The entry point of a worker started by [`addprocs`](@ref): joins the head,
serves calls until the head asks it to stop (or goes away), then returns.
Julia workers run `julia -e 'using LibCluster, LibCluster.API; LibCluster.serve()'`.
"""
function serve()
    join_head()
    # A dynamic call: the code that serves and shuts down compiles once the
    # head knows this worker, not before (compiling a method compiles its
    # static callees first, and the head waits for this worker meanwhile).
    Base.invokelatest(serve_joined)
end

"A worker's start: joins the head, applies what it asked (`worker_env`), tells it this worker is ready."
function join_head()
    RT.ctx == C_NULL || error("LibCluster.serve: this process already belongs to a cluster")
    max_message = tryparse(Int, get(ENV, "LIBCLUSTER_JULIA_MAX_MESSAGE_BYTES", ""))
    lock(INIT_LOCK) do
        # TLS: the library's default, LIBCLUSTER_TLS, which the launcher set to the head's.
        start!(:worker; max_message = max_message)
    end
    # What the head asked of this worker (worker_env), before any call runs.
    ENFORCE_MASTER_WORKER[] = get(ENV, "LIBCLUSTER_JULIA_TOPOLOGY", "") == "master_worker"
    get(ENV, "LIBCLUSTER_JULIA_THREADED_BLAS", "") == "1" || single_threaded_blas()
    for k in (LAUNCH_ENV..., WORKER_ENV...)
        delete!(ENV, k)
    end
    CAPI.check(CAPI.cluster_ready(RT.ctx))
    nothing
end

"A joined worker: serves until the head asks it to stop (or goes away), then shuts down."
function serve_joined()
    @async warmup()
    lock(RT.stop)
    try
        while !RT.stopping && !RT.closed
            wait(RT.stop)
        end
    finally
        unlock(RT.stop)
    end
    shutdown()
    nothing
end
