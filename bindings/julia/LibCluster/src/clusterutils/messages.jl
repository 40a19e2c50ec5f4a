# Message dicts (ClusterUtils' MessageDict, swapmsgs, collectmsgs): each
# process holds a dict under a global name of Main, keyed by pid, its own
# message under its own id. swapmsgs is an all-gather of those own entries
# over libcluster's collective (`cluster_allgather_async`): every
# participant sends its entry once and receives the others', with no
# round trip through the caller; a participant that dies fails the
# exchange on every other one, naming it.

"""
    MessageDict()                  # workers() => 0
    MessageDict(d::AbstractDict)   # a copy of d
    MessageDict(pids, X::AbstractArray)   # each pid => zero(X), a copy each
    MessageDict(pids, msgs::AbstractDict) # the entries of msgs for pids

A dict pid => message (ClusterUtils' constructors). `m.pids` are its keys, sorted.
"""
struct MessageDict <: AbstractDict{Int,Any}
    msgs::Dict{Int,Any}
end

MessageDict() = MessageDict(Dict{Int,Any}(k => 0 for k in workers()))
MessageDict(d::AbstractDict) = MessageDict(Dict{Int,Any}(Int(k) => v for (k, v) in d))
MessageDict(pids::AbstractVector{<:Integer}, X::AbstractArray) =
    MessageDict(Dict{Int,Any}(Int(k) => copy(zero(X)) for k in pids))
MessageDict(pids::AbstractVector{<:Integer}, msgs::AbstractDict) =
    MessageDict(Dict{Int,Any}(Int(k) => msgs[k] for k in pids))

function Base.getproperty(m::MessageDict, s::Symbol)
    s === :pids && return sort!(collect(keys(getfield(m, :msgs))))
    getfield(m, s)
end
Base.propertynames(::MessageDict, private::Bool = false) = (:pids, :msgs)

Base.getindex(m::MessageDict, k) = getindex(m.msgs, k)
Base.setindex!(m::MessageDict, v, k) = (setindex!(m.msgs, v, k); m)
Base.get(m::MessageDict, k, default) = get(m.msgs, k, default)
Base.get(f::Base.Callable, m::MessageDict, k) = get(f, m.msgs, k)
Base.haskey(m::MessageDict, k) = haskey(m.msgs, k)
Base.delete!(m::MessageDict, k) = (delete!(m.msgs, k); m)
Base.length(m::MessageDict) = length(m.msgs)
Base.iterate(m::MessageDict, s...) = iterate(m.msgs, s...)
Base.keys(m::MessageDict) = keys(m.msgs)
Base.values(m::MessageDict) = values(m.msgs)
Base.empty!(m::MessageDict) = (empty!(m.msgs); m)
Base.copy(m::MessageDict) = MessageDict(copy(m.msgs))

# ---------------------------------------------------------------- collectmsgs

"On a process: the entry of its own id in its dict `name` (of Main)."
own_entry(name::Symbol) = Core.eval(Main, name)[myid()]

"""
    collectmsgs(name, pids) -> Dict{Int,Any}

Each q of `pids` => the entry for q in q's dict `name` (a global of Main
there), gathered here from all at once.
"""
function collectmsgs(msgname::Symbol, pids::AbstractVector{<:Integer})
    msglocal = Dict{Int,Any}()
    for (q, v) in fetch_each(call_each(own_entry, pids, msgname))
        msglocal[q] = v
    end
    msglocal
end

"""
    collectmsgs(name, msglocal::AbstractDict) -> msglocal

Sets `msglocal[q]` to the entry for q in q's dict `name`, for each key q.
"""
function collectmsgs(msgname::Symbol, msglocal::AbstractDict)
    for (q, v) in fetch_each(call_each(own_entry, collect(Int, keys(msglocal)), msgname))
        msglocal[q] = v
    end
    msglocal
end

"""
    collectmsgs(name)

This process's dict `name` (of Main): each key q set to what q holds under
its own id. Returns the dict.
"""
collectmsgs(msgname::Symbol) = collectmsgs(msgname, Core.eval(Main, msgname)::AbstractDict)

# ----------------------------------------------------------------- swapmsgs

# Tags of this process's exchanges: its id in the top bits, a count below
# (the library matches calls by set and tag; one tag per exchange keeps
# concurrent exchanges over the same set apart).
const EXCHANGES = Ref(UInt64(0))
next_tag() = (UInt64(myid()) << 40) | (EXCHANGES[] += 1)

"""
On a process: all-gathers the `data` of every process of `pids` (this one
among them) under `tag`; pid => its bytes. Waits in this task only.
"""
function allgather(pids::Vector{Int}, tag::UInt64, data::Vector{UInt8}, timeout_ms::Int64)
    ids = Int32.(pids)
    bytes = try
        GC.@preserve ids data run_op(out -> CAPI.cluster_allgather_async(context(), pointer(ids), Csize_t(length(ids)), tag,
                                                                        pointer(data), Csize_t(length(data)), timeout_ms, out))
    catch err
        err isa CAPI.ClusterError && throw(library_exception(err))
        rethrow()
    end
    CAPI.parts(bytes)
end

function to_bytes(x)
    io = IOBuffer()
    serialize(io, x)
    take!(io)
end

"""
On each participant: sends its own entry of dict `name` to the others and
sets their entries from theirs. A participant whose entry cannot be read
takes part all the same (with the reason): every one then fails, none
waits for it. Entries may be of any sizes (the library's all-gather runs
entries on either side of its size classes as one call).
"""
function swap_here(name::Symbol, pids::Vector{Int}, tag::UInt64, timeout_ms::Int64)
    me = myid()
    d = nothing
    mine = try
        d = Core.eval(Main, name)
        d isa AbstractDict || error("$name is a $(typeof(d)), not a dict")
        to_bytes((true, d[me]))
    catch err
        to_bytes((false, sprint(showerror, err)))
    end
    got = allgather(pids, tag, mine, timeout_ms)
    entries = Pair{Int,Any}[]
    for (q, bytes) in got
        ok, v = deserialize(IOBuffer(bytes))
        ok || error("swapmsgs(:$name): on process $q: $v")
        push!(entries, q => v)
    end
    for (q, v) in entries
        d[q] = v
    end
    nothing
end

"The process whose death failed an exchange, from one participant's failure; 0 if none did."
function dead_participant(err)
    err isa ProcessExitedException && return err.worker_id
    err isa RemoteException && err.captured.ex isa ProcessExitedException && return err.captured.ex.worker_id
    0
end

"""
    swapmsgs(pids, name; timeout = nothing)
    swapmsgs(name; ...)                    # on workers()

On every participant p of `pids`, each entry q of its dict `name` (a
global of Main: a `MessageDict`, a `Dict`, any dict keyed by pid) becomes
what q holds under its own id q. An all-gather of the participants' own
entries, each sent once, at once. A participant that dies during the
exchange makes it fail on every other one: a `ProcessExitedException`
naming it. `timeout` (seconds) bounds the wait for a participant that
does not take part.
"""
function swapmsgs(pids::AbstractVector{<:Integer}, msgname::Symbol; timeout::Union{Nothing,Real} = nothing)
    ps = unique(Int[p for p in pids])
    isempty(ps) && return nothing
    ms = timeout === nothing ? Int64(-1) : round(Int64, 1000 * timeout)
    calls = call_each(swap_here, ps, msgname, ps, next_tag(), ms)
    try
        wait_each(calls)
    catch
        # The clearest failure: the death of a participant, by its id.
        for (p, r) in calls
            err = r isa Future ? (try wait(r); nothing catch e; e end) : r
            err === nothing && continue
            q = dead_participant(err)
            q != 0 && throw(ProcessExitedException(q))
        end
        rethrow()
    end
    nothing
end

swapmsgs(msgname::Symbol; timeout::Union{Nothing,Real} = nothing) = swapmsgs(workers(), msgname; timeout = timeout)
