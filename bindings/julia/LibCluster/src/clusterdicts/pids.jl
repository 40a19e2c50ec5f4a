# ClusterDicts' member sets. `PidsAll()` and `PidsWorkers()` stand for the
# processes there are: the head resolves them when the dict is made (the
# members never change afterwards, except that a dead one leaves).

export AbstractPids

"A set of processes a dict is stored on: `PidsAll()`, `PidsWorkers()` or `Pids(ids)`."
abstract type AbstractPids end

"The processes `ids` (a list of ids)."
struct Pids <: AbstractPids
    pids::Vector{Int}
    Pids(ids) = new(unique!(Int[p for p in ids]))
end

"Every process, the head included."
struct PidsAll <: AbstractPids end

"Every worker (the head alone when there is none): the default."
struct PidsWorkers <: AbstractPids end

"The ids the set stands for now."
pid_list(p::Pids) = p.pids
pid_list(::PidsAll) = procs()
pid_list(::PidsWorkers) = workers()

Base.in(x, p::AbstractPids) = x in pid_list(p)
Base.length(p::AbstractPids) = length(pid_list(p))
Base.getindex(p::AbstractPids, i::Int) = pid_list(p)[i]
Base.eltype(::Type{<:AbstractPids}) = Int
# The list is read once per iteration (as ClusterDicts' start/next).
Base.iterate(p::AbstractPids) = iterate(p, (1, pid_list(p)))
Base.iterate(::AbstractPids, (i, ids)) = i > length(ids) ? nothing : (ids[i], (i + 1, ids))

"""
The set a `(pids::Array)` constructor means, as ClusterDicts: `PidsAll()`
when the list is every process, `PidsWorkers()` when it is every worker,
else `Pids(pids)`.
"""
function pids_of(a::AbstractArray)
    ids = sort!(unique(Int[p for p in a]))
    ids == procs() && return PidsAll()
    ids == workers() && return PidsWorkers()
    Pids(ids)
end

members_kind(::PidsAll) = CAPI.CLUSTER_MEMBERS_ALL
members_kind(::PidsWorkers) = CAPI.CLUSTER_MEMBERS_WORKERS
members_kind(::Pids) = CAPI.CLUSTER_MEMBERS_PIDS

member_ids(::AbstractPids) = Int32[]
member_ids(p::Pids) = Int32[Int32(x) for x in p.pids]
