# @distributed over libcluster's `cluster_distributed_async`: the range is
# cut into contiguous chunks (Distributed's `splitrange`, one per worker of
# the pool; or chunks of `chunk` elements handed out as workers finish), each
# chunk runs on a worker as one element of a map (`DFOR_FN`, see pmap.jl)
# and gives its partial reduction; the caller reduces them in range order.

"""
    LibCluster.splitrange(firstIndex, lastIndex, np) -> Vector{UnitRange{Int}}

Distributed's `splitrange`: `firstIndex:lastIndex` cut into at most `np`
contiguous chunks whose lengths differ by at most one, the longer first
(1:11 over 3 gives 1:4, 5:8, 9:11).
"""
function splitrange(firstIndex::Integer, lastIndex::Integer, np::Integer)
    np >= 1 || throw(ArgumentError("np must be at least 1"))
    lastIndex < firstIndex && return UnitRange{Int}[]
    out = Vector{CAPI.Range64}(undef, np)
    cnt = Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_splitrange(CAPI.Range64(firstIndex, lastIndex), Csize_t(np), out, Csize_t(np), cnt))
    UnitRange{Int}[Int(out[i].first):Int(out[i].last) for i in 1:Int(cnt[])]
end

"What a worker runs for a chunk `lo:hi` of `R`: `body(reducer, R, lo, hi)`, or `body(R, lo, hi)` without reducer."
struct DForChunk{B,Rd,T}
    body::B
    reducer::Rd
    R::T
end

(j::DForChunk{B,Nothing})(lo, hi) where {B} = (j.body(j.R, lo, hi); nothing)
(j::DForChunk)(lo, hi) = j.body(j.reducer, j.R, lo, hi)

"Runs the chunks on the pool; their results in range order."
function run_chunks(job::DForChunk, R, chunk::Integer, pool::AbstractWorkerPool)
    chunk >= 0 || throw(ArgumentError("chunk must be 0 (one chunk per worker) or positive"))
    pool = engine_pool(pool)
    unshare_pending()
    also = job.reducer isa Function ? (dfor_parts(job.body), job.reducer) : (dfor_parts(job.body),)
    id = share_function(job, also)
    try
        args = Vector{UInt8}(undef, 9)
        GC.@preserve args begin
            unsafe_store!(Ptr{UInt64}(pointer(args)), htol(id))
        end
        args[9] = FLAG_FAIL_FAST
        # One call at a time per worker: each worker gets its own chunk of a static split.
        opts = Ref(map_options(1, false, 1))
        out = Ref{Ptr{Cvoid}}(C_NULL)
        rng = CAPI.Range64(Int64(firstindex(R)), Int64(lastindex(R)))
        st = CAPI.cluster_distributed_async(context(), c_pool(pool), DFOR_FN, rng, Csize_t(chunk), args,
                                            Csize_t(length(args)), opts, out)
        st == CAPI.CLUSTER_OK || throw(pool_exception(CAPI.last_error(st)))
        run = MapRun(out[])
        try
            mst = wait_map(run)
            mst == CAPI.CLUSTER_OK || throw(element_exception(mst))
            h = run.handle
            n = Ref{Csize_t}(0)
            CAPI.check(CAPI.cluster_pmap_length(h, n))
            vals = Vector{Any}(undef, Int(n[]))
            dp = Ref{Ptr{UInt8}}(C_NULL)
            dl = Ref{Csize_t}(0)
            for k in 1:Int(n[])
                s = CAPI.cluster_pmap_result(h, Csize_t(k - 1), dp, dl)
                if s == CAPI.CLUSTER_OK
                    ok, v = decode_map_reply(dp[], Int(dl[]))
                    ok || throw(v)
                    vals[k] = v
                elseif s != CAPI.CLUSTER_ERR_NOT_READY
                    throw(element_exception(s))
                end
            end
            return vals
        finally
            free_map!(run)
        end
    finally
        unshare_function(id)
    end
end

"""
    LibCluster.distributed_reduce(reducer, body, R; chunk=0, pool=default_worker_pool())

What `@distributed reducer for` runs: `body(reducer, R, lo, hi)` (the
partial reduction of `R[lo:hi]`) on the workers, reduced with `reducer` here.
"""
function distributed_reduce(reducer, body, R; chunk::Integer = 0, pool::AbstractWorkerPool = default_worker_pool())
    isempty(R) && return reduce(reducer, Any[])       # as Distributed: an error unless reducer has an init
    reduce(reducer, run_chunks(DForChunk(body, reducer, R), R, chunk, pool))
end

"""
    LibCluster.distributed_pfor(body, R; chunk=0, pool=default_worker_pool()) -> Task

What `@distributed for` (no reducer) runs: returns at once a task running
`body(R, lo, hi)` over the chunks; `wait` on it (or `@sync`) waits for all.
"""
function distributed_pfor(body, R; chunk::Integer = 0, pool::AbstractWorkerPool = default_worker_pool())
    @async begin
        isempty(R) || run_chunks(DForChunk(body, nothing, R), R, chunk, pool)
        nothing
    end
end

"""
    LibCluster.distributed_for(f, R; reducer=nothing, chunk=0, pool=default_worker_pool())

`f(x)` for each `x` in `R` on the workers: with `reducer`, the reduction of
the values (partial reductions on the workers, final one here), else a
`Task` as `@distributed for` returns. `chunk = 0` is Distributed's static
split (one contiguous chunk per worker); `chunk = n` hands out chunks of
`n` elements as workers finish (dynamic balancing, for uneven work).
"""
function distributed_for(f, R; reducer = nothing, chunk::Integer = 0, pool::AbstractWorkerPool = default_worker_pool())
    if reducer === nothing
        return distributed_pfor(ElementLoop(f), R; chunk = chunk, pool = pool)
    end
    distributed_reduce(reducer, ElementReduce(f), R; chunk = chunk, pool = pool)
end

"`f` over `R[lo:hi]` (distributed_for without reducer)."
struct ElementLoop{F}
    f::F
end
function (e::ElementLoop)(R, lo, hi)
    for x in R[lo:hi]
        e.f(x)
    end
    nothing
end

"The reduction of `f` over `R[lo:hi]`."
struct ElementReduce{F}
    f::F
end
function (e::ElementReduce)(reducer, R, lo, hi)
    ac = e.f(R[lo])
    for x in R[(lo + 1):hi]
        ac = reducer(ac, e.f(x))
    end
    ac
end

# What DForChunk sends for its globals: also the function inside these.
dfor_parts(b) = b
dfor_parts(b::ElementLoop) = b.f
dfor_parts(b::ElementReduce) = b.f

function make_preduce_body(var, body)
    quote
        function (reducer, R, lo::Int, hi::Int)
            $(esc(var)) = R[lo]
            ac = $(esc(body))
            if lo != hi
                for $(esc(var)) in R[(lo + 1):hi]
                    ac = reducer(ac, $(esc(body)))
                end
            end
            ac
        end
    end
end

function make_pfor_body(var, body)
    quote
        function (R, lo::Int, hi::Int)
            for $(esc(var)) in R[lo:hi]
                $(esc(body))
            end
        end
    end
end

"""
    @distributed [reducer] for var = range
        body
    end
    @distributed chunk=n [reducer] for ...

Distributed's parallel for loop: the range is split into contiguous chunks,
one per worker (`splitrange`); with a reducer each worker reduces its chunk
and the caller reduces their results. Without a reducer it returns at once
a `Task`; `@sync @distributed for ...` (or `wait`) waits for it. Globals used
in the body travel with it as with any closure. LibCluster's addition:
`chunk=n` first hands out chunks of `n` elements as workers finish
(dynamic balancing).
"""
macro distributed(args...)
    chunk = 0
    if !isempty(args) && args[1] isa Expr && args[1].head === :(=) && args[1].args[1] === :chunk
        chunk = esc(args[1].args[2])
        args = args[2:end]
    end
    na = length(args)
    if na == 1
        loop = args[1]
    elseif na == 2
        reducer = args[1]
        loop = args[2]
    else
        throw(ArgumentError("wrong number of arguments to @distributed"))
    end
    if !isa(loop, Expr) || loop.head !== :for
        error("malformed @distributed loop")
    end
    var = loop.args[1].args[1]
    r = loop.args[1].args[2]
    body = loop.args[2]
    if na == 1
        syncvar = esc(Base.sync_varname)
        return quote
            local ref = $distributed_pfor($(make_pfor_body(var, body)), $(esc(r)); chunk = $chunk)
            if $(Expr(:islocal, syncvar))
                put!($syncvar, ref)
            end
            ref
        end
    else
        return :($distributed_reduce($(esc(reducer)), $(make_preduce_body(var, body)), $(esc(r)); chunk = $chunk))
    end
end
