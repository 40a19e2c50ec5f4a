# pmap over libcluster's pmap engine.
#
# The engine (C) calls `MAP_FN` on the workers with each element's bytes,
# keeps the results in input order and never hangs when workers die. An
# element is the number of the map's function (cached on each worker, see
# pools.jl) and its arguments; the worker answers with the value or with its
# Julia exception, both as a success for the engine, so that every Julia
# policy (on_error, retry_delays, retry_check) runs here, in Julia: after a
# pass, the elements that failed (a Julia exception, or the engine's own
# error such as the death of their worker) are retried by another pass over
# only them, then on_error applies or the error is thrown.
#
#   element = number::UInt64 * flags::UInt8 * (fast args | serialize(Any[args...]))
#   reply   = TAG_OK_FAST * value | MAP_TAGGED * pid::Int32 * (a reply of wire.jl)
#
# With no on_error and no retries (flags & FAIL_FAST) a Julia exception
# fails the call instead (its message carries the serialized exception), so
# that the engine stops the map at the first failure, as Distributed does.

const MAP_FN = "LibCluster.map"
const DFOR_FN = "LibCluster.dfor"
const KIND_MAP = 3
const KIND_DFOR = 4

const FLAG_FAST_ARGS = 0x01
const FLAG_FAIL_FAST = 0x02
const MAP_TAGGED = 0x80
const ERR_PREFIX = "LibCluster.err:"

# ------------------------------------------------------------ on a worker
#
# Map elements do not get a task each: the event loop queues them and one
# task runs the queue, element after element (a worker runs one element of
# a map at a time, as Distributed's pool hands it one call at a time).

const MAP_QUEUE = Tuple{Int,Ptr{Cvoid}}[]
const MAP_RUNNING = Ref(false)
const MAP_IN_ELEMENT = Ref(false)                  # the queue's task is inside an element's function
const MAP_CURRENT = Ref((0, UInt64(0)))            # (owner, function number) of that element

"(caller, function number) of a map call."
function map_key(kind::Int, call::Ptr{Cvoid})
    caller = Ref{Int32}(0)
    CAPI.cluster_call_caller(call, caller)
    data = Ref{Ptr{UInt8}}(C_NULL)
    len = Ref{Csize_t}(0)
    CAPI.cluster_call_args(call, data, len)
    at = kind == KIND_MAP ? 0 : 16
    Int(len[]) >= at + 8 || return (Int(caller[]), UInt64(0))
    (Int(caller[]), ltoh(unsafe_load(Ptr{UInt64}(data[] + at))))
end

function queue_map_call(kind::Int, call::Ptr{Cvoid})
    # Called by the event loop: if the queue's task is inside an element,
    # that element waits (it yielded), maybe for this call: an element of
    # another map (a pmap inside a pmap, whose pool has this process) gets a
    # task of its own, so that it does not wait behind the element waiting
    # for it. Elements of the same map run one after another.
    if MAP_IN_ELEMENT[] && map_key(kind, call) != MAP_CURRENT[]
        schedule(Task(() -> run_map_call(kind, call, false)))
        return
    end
    push!(MAP_QUEUE, (kind, call))
    if !MAP_RUNNING[]
        MAP_RUNNING[] = true
        schedule(Task(run_map_queue))
    end
    nothing
end

function run_map_queue()
    i = 0
    try
        while i < length(MAP_QUEUE)     # grows while an element yields
            i += 1
            kind, call = @inbounds MAP_QUEUE[i]
            run_map_call(kind, call, true)
        end
    finally
        empty!(MAP_QUEUE)
        MAP_RUNNING[] = false
    end
    nothing
end

function run_map_call(kind::Int, call::Ptr{Cvoid}, queued::Bool)
    count!(STAT_CALLS)
    try
        bytes = call_args(call)
        caller = Ref{Int32}(0)
        CAPI.cluster_call_caller(call, caller)
        owner = Int(caller[])
        note_caller(owner)
        flags = 0x00
        out = try
            io = IOBuffer(bytes)
            if kind == KIND_MAP
                id = read(io, UInt64)
                flags = read(io, UInt8)
                f = cached_function(owner, id)
                args = flags & FLAG_FAST_ARGS != 0 ? read_args(io) :
                       Base.invokelatest(deserialize_rest, io, owner)::Vector{Any}
                queued && (MAP_IN_ELEMENT[] = true; MAP_CURRENT[] = (owner, id))
                v = try
                    call_latest(f, args)
                finally
                    queued && (MAP_IN_ELEMENT[] = false)
                end
                map_ok(v)
            else
                lo = read(io, Int64)
                hi = read(io, Int64)
                id = read(io, UInt64)
                flags = read(io, UInt8)
                f = cached_function(owner, id)
                queued && (MAP_IN_ELEMENT[] = true; MAP_CURRENT[] = (owner, id))
                v = try
                    Base.invokelatest(f, lo, hi)
                finally
                    queued && (MAP_IN_ELEMENT[] = false)
                end
                map_ok(v)
            end
        catch err
            e = Base.invokelatest(map_err, err, catch_backtrace())::IOBuffer
            if flags & FLAG_FAIL_FAST != 0
                CAPI.cluster_call_fail(call, ERR_PREFIX * bytes2hex(view(e.data, 1:e.size)))
                nothing
            else
                e
            end
        end
        out === nothing || reply(call, out)
    catch err
        CAPI.cluster_call_fail(call, "LibCluster internal error on process $(RT.myid): " * safe_showerror(err))
    finally
        CAPI.cluster_call_free(call)
    end
    nothing
end

function map_ok(@nospecialize(v))
    fast_value(v) || return Base.invokelatest(map_ok_serialized, v)::IOBuffer
    io = scratch()
    write(io, TAG_OK_FAST)
    write_value(io, v)
    io
end

function map_ok_serialized(@nospecialize(v))
    io = IOBuffer()
    write(io, MAP_TAGGED)
    write(io, Int32(RT.myid))
    write(io, TAG_OK)
    serialize_value(io, v)
    io
end

function map_err(err, bt)
    e = encode_err(err, bt)
    io = IOBuffer()
    write(io, MAP_TAGGED)
    write(io, Int32(RT.myid))
    write(io, view(e.data, 1:e.size))
    io
end

# ------------------------------------------------------------- on the caller

"""
The outcome of one element from its reply bytes: `(true, value)` or
`(false, RemoteException)`. The commonest values are read in place.
"""
function decode_map_reply(p::Ptr{UInt8}, n::Int)
    n == 0 && return (true, nothing)
    tag = unsafe_load(p)
    if tag == TAG_OK_FAST && n >= 2
        t = unsafe_load(p + 1)
        n == 10 && t == FV_INT && return (true, unsafe_load(Ptr{Int64}(p + 2)))
        n == 10 && t == FV_FLOAT && return (true, unsafe_load(Ptr{Float64}(p + 2)))
        n == 2 && t == FV_NOTHING && return (true, nothing)
        n == 2 && t == FV_TRUE && return (true, true)
        n == 2 && t == FV_FALSE && return (true, false)
        io = IOBuffer(unsafe_wrap(Array, p, n))
        skip(io, 1)
        return (true, read_value(io))
    elseif tag == MAP_TAGGED && n >= 5
        pid = Int(unsafe_load(Ptr{Int32}(p + 1)))
        return decode_reply(unsafe_wrap(Array, p + 5, n - 5), pid)
    end
    decode_reply(unsafe_wrap(Array, p, n), 0)
end

"The exception of an element the engine failed (its status `st`, read at once)."
function element_exception(st::Int32)
    err = CAPI.last_error(st)
    i = findfirst(ERR_PREFIX, err.msg)
    if i !== nothing
        # A Julia exception in fail-fast mode: the map_err reply, in hex.
        b = try
            hex2bytes(err.msg[last(i) + 1:end])
        catch
            UInt8[]
        end
        if length(b) > 5 && b[1] == MAP_TAGGED
            pid = Int(ltoh(reinterpret(Int32, b[2:5])[1]))
            ok, ex = decode_reply(b[6:end], pid)
            ok || return ex
        end
    end
    pool_exception(err, err.pid)
end

# Arguments of the elements, in one buffer.
mutable struct MapItems
    buf::IOBuffer
    ends::Vector{Int}
end

function encode_items(id::UInt64, flags::UInt8, items, idx)
    buf = IOBuffer(; sizehint = 24 * length(idx))
    ends = Vector{Int}(undef, length(idx))
    for (k, i) in enumerate(idx)
        args = @inbounds items[i]
        write(buf, id)
        if fast_args(args)
            write(buf, flags | FLAG_FAST_ARGS)
            write_args(buf, args)
        else
            write(buf, flags)
            Base.invokelatest(serialize_args, buf, args)
        end
        @inbounds ends[k] = buf.size
    end
    MapItems(buf, ends)
end

serialize_args(io::IO, @nospecialize(args::Tuple)) = serialize(Serializer(io), Any[args...])

"Keeps `pm` (a cluster_pmap) until freed; cancels it if dropped while running."
mutable struct MapRun
    handle::Ptr{Cvoid}
end

function free_map!(m::MapRun)
    h = m.handle
    if h != C_NULL
        m.handle = C_NULL
        if CAPI.LIB_HANDLE[] != C_NULL && RT.ctx != C_NULL
            CAPI.cluster_pmap_cancel(h)
            CAPI.cluster_pmap_free(h)
        end
    end
    nothing
end

"""
Waits in this task for the map to end; returns its status. While the map
makes progress the task reads the connections of the map's workers itself
(`cluster_drive`, in turn, a slice each), so that replies need no wake-up
of a library thread and the next calls go out from here. When no element
completed for a while (long elements, a loaded machine), it parks: until
the map ends (its FUTURE_READY event) or a timer, doubling from 1 ms to
100 ms while nothing moves, after which it looks again.
"""
function wait_map(m::MapRun, pids::Vector{Int} = Int[])
    out = Ref{Ptr{Cvoid}}(C_NULL)
    CAPI.check(CAPI.cluster_pmap_future(m.handle, out))
    h = out[]
    try
        id = Ref{UInt64}(0)
        CAPI.check(CAPI.cluster_future_id(h, id))
        if RT.spin_ns > 0 && CAPI.has_drive() && !isempty(pids)
            drive_map(m, h, id[], pids)
        end
        park_until_ready(h, id[])
    finally
        CAPI.cluster_future_free(h)
    end
    CAPI.cluster_pmap_wait(m.handle, 0)
end

const STALL_NS = Ref(UInt64(1_000_000))

function drive_map(m::MapRun, fh::Ptr{Cvoid}, id::UInt64, pids::Vector{Int})
    pending = Ref(false)
    done = Ref{Csize_t}(0)
    last_done = -1
    last_progress = time_ns()
    nap = 0.001
    i = 0
    while !handle_isready(fh)
        ctx = RT.ctx
        ctx == C_NULL && return
        if contention()
            park_for(fh, id, nap)       # short of CPUs: spinning would hold up the workers
        else
            i = i == length(pids) ? 1 : i + 1
            CAPI.cluster_drive(ctx, Int32(@inbounds pids[i]), RT.slice_us, pending)
            # The event loop polls what the library queued for it (and other tasks run).
            if pending[] || others_runnable()
                RT.last_yield = time_ns()
                yield()
            else
                let_others_run()
            end
        end
        CAPI.cluster_pmap_progress(m.handle, done, C_NULL) == CAPI.CLUSTER_OK || return
        now = time_ns()
        if Int(done[]) != last_done
            last_done = Int(done[])
            last_progress = now
            nap = 0.001
        elseif now - last_progress > STALL_NS[]
            park_for(fh, id, nap)
            nap = min(2nap, 0.1)
            last_progress = time_ns()
        end
    end
end

"""
Parks the task until the library future `h` (id `id`) completes or `secs`
have passed, as `park_until_ready` (woken by the event loop) with a timer.
"""
function park_for(h::Ptr{Cvoid}, id::UInt64, secs::Float64)
    lock(RT.lock)
    try
        handle_isready(h) && return
        c = get!(() -> Threads.Condition(RT.lock), RT.waiters, id)
        timer = Timer(secs) do _
            lock(RT.lock)
            try
                notify(c)
            finally
                unlock(RT.lock)
            end
        end
        try
            wait(c)
        finally
            close(timer)
            # (woken by the timer: the entry would outlive the map's event)
            get(RT.waiters, id, nothing) === c && delete!(RT.waiters, id)
        end
    finally
        unlock(RT.lock)
    end
    nothing
end

"The processes a map's waiting task reads from: the pool's live members but this one."
drive_pids(pool::AbstractWorkerPool) = filter(!=(RT.myid), try
    workers(pool)
catch
    Int[]
end)

# The most calls in flight to one worker (0: the library's default), `LIBCLUSTER_JULIA_PMAP_IN_FLIGHT`.
const PMAP_IN_FLIGHT = Ref(something(tryparse(Int, get(ENV, "LIBCLUSTER_JULIA_PMAP_IN_FLIGHT", "0")), 0))

function map_options(batch, on_error::Bool, max_in_flight::Integer = PMAP_IN_FLIGHT[])
    d = CAPI.pmap_options_init()
    CAPI.PmapOptions(d.struct_size, Csize_t(batch), on_error, C_NULL, 0, C_NULL, C_NULL, C_NULL, C_NULL,
                     d.progress_interval_ms, max_in_flight == 0 ? d.max_in_flight : UInt32(max_in_flight))
end

"""
Progress of the maps of a pmap: `report(done, total)` from a task that reads
the running map's count every `interval` seconds (no library callback).
"""
mutable struct Progress
    report::Any
    total::Int
    before::Int             # elements done before the running pass
    run::Union{Nothing,MapRun}
    interval::Float64
    last::Int
end

function progress_reporter(progress, total::Int)
    progress === nothing && return nothing
    progress === false && return nothing
    if progress === true
        t0 = time()
        report = (done, total) -> begin
            pct = total == 0 ? 100 : round(Int, 100 * done / total)
            el = round(time() - t0, digits = 1)
            print(stderr, "\rpmap: $done/$total ($pct%) $(el) s", done == total ? "\n" : "")
            flush(stderr)
        end
        return Progress(report, total, 0, nothing, 1.0, -1)
    end
    Progress(progress, total, 0, nothing, PROGRESS_INTERVAL[], -1)
end

# Seconds between a callback's reports (internal: the benchmark raises
# the rate to measure what a report costs).
const PROGRESS_INTERVAL = Ref(0.1)

function report!(p::Progress, done::Int)
    done == p.last && return
    p.last = done
    try
        Base.invokelatest(p.report, done, p.total)
    catch err
        @warn "pmap: the progress callback failed" exception = err
    end
end

function progress_task(p::Progress, finished::Ref{Bool})
    @async while !finished[]
        sleep(p.interval)
        finished[] && break
        r = p.run
        if r !== nothing && r.handle != C_NULL
            d = Ref{Csize_t}(0)
            CAPI.cluster_pmap_progress(r.handle, d, C_NULL) == CAPI.CLUSTER_OK && report!(p, p.before + Int(d[]))
        end
    end
end

"""
One pass: the elements `items[idx]` on the pool; fills `vals[idx]` with the
values and returns the failed ones as (index, exception) in input order.
With `fail_fast` the engine stops at the first failure, and only that one
(the first in input order of those seen) is returned.
"""
function run_pass!(vals::Vector{Any}, id::UInt64, pool::AbstractWorkerPool, items, idx::Vector{Int},
                   batch, fail_fast::Bool, prog::Union{Nothing,Progress})
    n = length(idx)
    failed = Tuple{Int,Any}[]
    n == 0 && return failed
    enc = encode_items(id, fail_fast ? FLAG_FAIL_FAST : 0x00, items, idx)
    data = enc.buf.data
    opts = Ref(map_options(batch, !fail_fast))
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = GC.@preserve data begin
        base = pointer(data)
        cb = Vector{CAPI.Bytes}(undef, n)
        prev = 0
        @inbounds for k in 1:n
            e = enc.ends[k]
            cb[k] = CAPI.Bytes(base + prev, Csize_t(e - prev))
            prev = e
        end
        CAPI.cluster_pmap_async(context(), c_pool(pool), MAP_FN, cb, Csize_t(n), opts, out)
    end
    st == CAPI.CLUSTER_OK || throw(pool_exception(CAPI.last_error(st)))
    run = MapRun(out[])
    prog === nothing || (prog.run = run)
    try
        mst = wait_map(run, drive_pids(pool))
        # (read now: the calls below replace the thread's last error)
        map_error = mst == CAPI.CLUSTER_OK ? nothing : element_exception(mst)
        h = run.handle
        dp = Ref{Ptr{UInt8}}(C_NULL)
        dl = Ref{Csize_t}(0)
        @inbounds for k in 1:n
            s = CAPI.cluster_pmap_result(h, Csize_t(k - 1), dp, dl)
            i = idx[k]
            if s == CAPI.CLUSTER_OK
                ok, v = decode_map_reply(dp[], Int(dl[]))
                ok ? (vals[i] = v) : push!(failed, (i, v))
            elseif s == CAPI.CLUSTER_ERR_NOT_READY
                # not run: the map ended first (fail_fast)
            else
                push!(failed, (i, element_exception(s)))
            end
        end
        # The element that ended the map holds no result: its error is the map's.
        if map_error !== nothing && (fail_fast || isempty(failed))
            pushfirst!(failed, (idx[1], map_error))
        end
    finally
        prog === nothing || (prog.before += n; prog.run = nothing)
        free_map!(run)
    end
    fail_fast && length(failed) > 1 && resize!(failed, 1)
    failed
end

"The exception a retry check and on_error see: the remote one unwrapped (Distributed's `extract_exception`)."
raw_exception(e) = e isa RemoteException ? e.captured.ex : e

"`on_error(ex)` inside a `catch` of `ex`, so that it can `rethrow()`: (true, value) or (false, what it threw)."
function apply_on_error(on_error, ex)
    try
        throw(ex)
    catch e
        try
            return (true, on_error(e))
        catch e2
            return (false, e2)
        end
    end
end

"""
    pmap(f, [pool], c...; distributed=true, batch_size=1, on_error=nothing,
         retry_delays=[], retry_check=nothing, progress=nothing) -> collection

Distributed's `pmap`: `f` applied to each element of `c` (several
collections are zipped) on the workers of `pool` (default: every worker,
with `f` cached on each as by a [`CachingPool`](@ref)); the results in
input order, shaped as `map(f, c)`. See the package README ("Pools and
pmap") for `on_error`, `retry_delays`, `retry_check` and `batch_size` and how
they differ from Distributed's. `progress=true` prints progress to stderr
(once a second); `progress=(done, total) -> ...` is called with it
(every 0.1 s, and once at the end).
"""
function pmap(f, p::AbstractWorkerPool, c; distributed::Bool = true, batch_size = 1, on_error = nothing,
              retry_delays = [], retry_check = nothing, progress = nothing)
    items = collect(c)
    args = map(x -> (x,), items)
    run_pmap(f, p, items, vec(args), distributed, batch_size, on_error, retry_delays, retry_check, progress, false)
end

function pmap(f, p::AbstractWorkerPool, c1, c...; distributed::Bool = true, batch_size = 1, on_error = nothing,
              retry_delays = [], retry_check = nothing, progress = nothing)
    items = collect(zip(c1, c...))
    run_pmap(f, p, items, vec(items), distributed, batch_size, on_error, retry_delays, retry_check, progress, false)
end

pmap(f, c; kwargs...) = pmap_default(f, (c,); kwargs...)
pmap(f, c1, c...; kwargs...) = pmap_default(f, (c1, c...); kwargs...)

function pmap_default(f, cs::Tuple; distributed::Bool = true, batch_size = 1, on_error = nothing,
                      retry_delays = [], retry_check = nothing, progress = nothing)
    items = length(cs) == 1 ? collect(cs[1]) : collect(zip(cs...))
    args = length(cs) == 1 ? vec(map(x -> (x,), items)) : vec(items)
    run_pmap(f, default_worker_pool(), items, args, distributed, batch_size, on_error, retry_delays, retry_check,
             progress, true)
end

const NAMED_FN_IDS = IdDict{Any,UInt64}()

function run_pmap(f, pool::AbstractWorkerPool, shape, args::AbstractVector, distributed::Bool, batch_size, on_error,
                  retry_delays, retry_check, progress, temporary::Bool)
    pool = engine_pool(pool)
    n = length(args)
    unshare_pending()
    # As Distributed: no workers (a pool never given any), or asked: here, in tasks.
    if !distributed || !populated(pool)
        return local_pmap(f, shape, args, on_error, retry_delays, retry_check, pool)
    end
    batch = batch_size === :auto ? CAPI.CLUSTER_BATCH_AUTO : Int(batch_size)
    batch_size === :auto || batch >= 1 || throw(ArgumentError("batch_size must be at least 1 or :auto"))
    shared = false
    if pool isa CachingPool && !temporary
        id = cache_id!(pool, f)
    elseif function_ref(f) !== nothing
        # A named function: nothing captured, kept on the workers for good
        # (a map of it again sends nothing first).
        id = get!(() -> share_function(f), NAMED_FN_IDS, f)
    else
        id = share_function(f)
        shared = true
    end
    vals = Vector{Any}(undef, n)
    prog = progress_reporter(progress, n)
    finished = Ref(false)
    prog === nothing || progress_task(prog, finished)
    try
        map_elements!(vals, id, pool, args, batch, on_error, retry_delays, retry_check, prog)
    finally
        finished[] = true
        shared && unshare_function(id)
    end
    prog === nothing || report!(prog, n)
    k = 0
    map(_ -> (k += 1; @inbounds vals[k]), shape)
end

function map_elements!(vals, id, pool, args, batch, on_error, retry_delays, retry_check, prog)
    n = length(args)
    handlers = on_error !== nothing || !isempty(retry_delays)
    todo = collect(1:n)
    if batch != 1 && handlers
        # Distributed's batch mode: the failed elements are retried with
        # batch size 1 and the delays after the first, if the check passes
        # for all; else on_error for each, else all their errors thrown.
        failed = run_pass!(vals, id, pool, args, todo, batch, false, prog)
        isempty(failed) && return
        exs = Any[raw_exception(e) for (_, e) in failed]
        st = iterate(retry_delays)
        st === nothing || (st = st[2])
        if length(retry_delays) > 0 && (retry_check === nothing || all(ex -> retry_check(st, ex)[2], exs))
            todo = Int[i for (i, _) in failed]
            retry_delays = collect(retry_delays)[2:end]
        elseif on_error !== nothing
            for ((i, _), ex) in zip(failed, exs)
                ok, v = apply_on_error(on_error, ex)
                ok || throw(v)
                vals[i] = v
            end
            return
        else
            throw(CompositeException(exs))
        end
        batch = 1
        prog === nothing || (prog.before -= length(todo))
    end
    # Batch size 1 (Distributed's wrappers): on_error first, for each failure;
    # if it throws, the element is retried (per element: the delays and the
    # check's state, as `retry`), else it keeps on_error's value.
    retries = !isempty(retry_delays)
    states = Dict{Int,Any}()         # index => what `iterate(retry_delays)` gave last
    while !isempty(todo)
        failed = run_pass!(vals, id, pool, args, todo, batch, !handlers, prog)
        isempty(failed) && return
        again = Int[]
        wait_s = 0.0
        for (i, exc) in failed
            ex = exc
            if on_error !== nothing
                ok, v = apply_on_error(on_error, raw_exception(exc))
                ok && (vals[i] = v; continue)
                v === raw_exception(exc) || (ex = v)
            end
            retries || throw(ex)
            y = haskey(states, i) ? states[i] : iterate(retry_delays)
            y === nothing && throw(raw_exception(ex))
            delay, state = y
            if retry_check !== nothing
                r = retry_check(state, raw_exception(ex))
                state, go = r isa Tuple && length(r) == 2 ? r : (state, r)
                go || throw(raw_exception(ex))
            end
            states[i] = iterate(retry_delays, state)
            wait_s = max(wait_s, Float64(delay))
            push!(again, i)
        end
        prog === nothing || (prog.before -= length(again))
        wait_s > 0 && sleep(wait_s)
        todo = again
        batch = 1
    end
end

"`pmap` in this process's tasks (Distributed's `distributed=false`, or a pool without workers)."
function local_pmap(f, shape, args, on_error, retry_delays, retry_check, pool)
    g = a -> f(a...)
    if on_error !== nothing
        g0 = g
        g = a -> try
            g0(a)
        catch e
            on_error(e)
        end
    end
    length(retry_delays) > 0 && (g = retry(g; delays = retry_delays, check = retry_check))
    vals = asyncmap(g, args; ntasks = () -> max(1, nworkers(pool)))
    k = 0
    map(_ -> (k += 1; @inbounds vals[k]), shape)
end
