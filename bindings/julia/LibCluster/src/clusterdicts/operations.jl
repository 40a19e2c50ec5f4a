# The AbstractDict functions on both kinds of dict, ValueF, localpart and
# local_dicts. Missing keys behave as `Dict`'s: `KeyError` from `d[k]` and
# `pop!(d, k)`, the default from `get`, nothing from `delete!`.

for DT in (:GlobalDict, :DistributedDict)
    @eval begin
        $DT(; kw...) = $DT(PidsWorkers(); kw...)
        $DT(pids::AbstractArray; kw...) = $DT(pids_of(pids); kw...)
    end
end

GlobalDict(pids::AbstractPids; name::Union{Nothing,AbstractString} = nothing, ktype::Type = Any, vtype::Type = Any) =
    create_dict(GlobalDict, pids, name, ktype, vtype, 0)

DistributedDict(pids::AbstractPids; name::Union{Nothing,AbstractString} = nothing, ktype::Type = Any,
                vtype::Type = Any, replication::Integer = 0) =
    create_dict(DistributedDict, pids, name, ktype, vtype, replication)

"""
    ValueF(f)

A value computed where it is stored: `d[k] = ValueF(f)` stores `f()` as run
on each member of a GlobalDict (`ValueF(myid)` stores each member's own id
there), on the key's owner for a DistributedDict.
"""
struct ValueF
    f::Function
end

Base.IteratorSize(::Type{<:DistributedAssociative}) = Base.SizeUnknown()

# ------------------------------------------------------------- reading

function Base.getindex(d::DistributedAssociative, k)
    key = lookup_key(d, k)
    key === nothing && throw(KeyError(k))
    b = read_bytes(d, key)
    b === nothing && throw(KeyError(k))
    decode_value(d, b)
end

function Base.get(d::DistributedAssociative, k, default)
    key = lookup_key(d, k)
    key === nothing && return default
    b = read_bytes(d, key)
    b === nothing ? default : decode_value(d, b)
end

function Base.get(f::Base.Callable, d::DistributedAssociative, k)
    key = lookup_key(d, k)
    key === nothing && return f()
    b = read_bytes(d, key)
    b === nothing ? f() : decode_value(d, b)
end

function Base.haskey(d::DistributedAssociative, k)
    key = lookup_key(d, k)
    key === nothing && return false
    if d isa GlobalDict
        b = local_bytes(d, key)
        b isa NotHeld || return b !== nothing
    end
    key_op(CAPI.cluster_dict_haskey_async, d, key)::Vector{UInt8} == [0x01]
end

"""
    get!(d, k, default)

The value of `k`, or, when it is not there, `default` stored and returned:
atomic at the key's owner, so concurrent callers all get the one value that
was stored (and a GlobalDict's members all hold it).
"""
function Base.get!(d::DistributedAssociative, k, default)
    key = store_key(d, k)
    if d isa GlobalDict
        b = local_bytes(d, key)
        b isa Vector{UInt8} && return decode_value(d, b)
    end
    get_or_insert(d, key, store_value(d, default))
end

"""
    get!(f, d, k)

As `get!(d, k, f())`, calling `f` only when `k` is not there (here: it may
be called and its value not stored, when another process inserted `k`
meanwhile; the value returned is the one stored).
"""
function Base.get!(f::Base.Callable, d::DistributedAssociative, k)
    key = store_key(d, k)
    b = read_bytes(d, key)
    b === nothing || return decode_value(d, b)
    get_or_insert(d, key, store_value(d, f()))
end

function get_or_insert(d::DistributedAssociative, key::Vector{UInt8}, value::Vector{UInt8})
    b = GC.@preserve key value dict_op(d) do h, out
        CAPI.cluster_dict_get_or_insert_async(h, pointer(key), Csize_t(length(key)), pointer(value),
                                              Csize_t(length(value)), out)
    end
    decode_value(d, b::Vector{UInt8})
end

"`length(d)`: the pairs of every member (a DistributedDict: summed over its members)."
function Base.length(d::DistributedAssociative)
    b = dict_op(CAPI.cluster_dict_length_async, d)::Vector{UInt8}
    length(b) == 8 || error("ClusterDicts: a length of $(length(b)) bytes")
    Int(ltoh(reinterpret(UInt64, b)[1]))
end

"`isempty(d)`: true only when no member holds a pair."
Base.isempty(d::DistributedAssociative) = length(d) == 0

"The keys, gathered from the members (one listing), in no particular order."
function Base.keys(d::DistributedAssociative{K}) where {K}
    out = K[]
    listing((k, _) -> push!(out, decode_key(d, k)), d, CAPI.CLUSTER_DICT_KEYS)
    out
end

"The values, gathered from the members (one listing), in no particular order."
function Base.values(d::DistributedAssociative{K,V}) where {K,V}
    out = V[]
    listing((_, v) -> push!(out, decode_value(d, v)), d, CAPI.CLUSTER_DICT_VALUES)
    out
end

"Every pair, gathered from the members (one listing), in no particular order."
function pairs_now(d::DistributedAssociative{K,V}) where {K,V}
    out = Pair{K,V}[]
    listing((k, v) -> push!(out, decode_key(d, k) => decode_value(d, v)), d, CAPI.CLUSTER_DICT_PAIRS)
    out
end

# Iteration takes one listing of the pairs when it starts.
Base.iterate(d::DistributedAssociative) = iterate(d, (pairs_now(d), 1))
Base.iterate(::DistributedAssociative, (ps, i)) = i > length(ps) ? nothing : (ps[i], (ps, i + 1))

# ------------------------------------------------------------- writing

"`d[k] = v`: set on every replica (every member of a GlobalDict) before it returns."
function Base.setindex!(d::DistributedAssociative, v, k)
    key = store_key(d, k)
    value = store_value(d, v)
    set_bytes(d, key, value)
    d
end

function set_bytes(d::DistributedAssociative, key::Vector{UInt8}, value::Vector{UInt8})
    GC.@preserve key value dict_op(d) do h, out
        CAPI.cluster_dict_set_async(h, pointer(key), Csize_t(length(key)), pointer(value), Csize_t(length(value)), out)
    end
    nothing
end

"On a member: `f()` converted to the value type, encoded (the caller never decodes it)."
valuef_bytes(f, ::Type{V}) where {V} = encode_bytes(convert(V, f()))

"""
`d[k] = ValueF(f)` on a GlobalDict: `f()` runs on every member at once,
then one write stores each member's own result there (the library's
CLUSTER_DICT_EACH value function), ordered with the key's other writes.
"""
function Base.setindex!(d::GlobalDict{K,V}, v::ValueF, k) where {K,V}
    key = store_key(d, k)
    members = dict_members(d)
    tasks = [@async(remotecall_fetch(valuef_bytes, p, v.f, V)) for p in members]
    io = IOBuffer()
    computed = 0
    for (p, t) in zip(members, tasks)
        r = try
            fetch(t)
        catch e
            ex = e isa TaskFailedException ? e.task.exception : e
            ex isa ProcessExitedException && continue    # a member that died holds nothing
            throw(ex)
        end
        write(io, htol(UInt32(p)), htol(UInt64(length(r))), r)
        computed += 1
    end
    computed == 0 && throw(ProcessExitedException(isempty(members) ? -1 : members[1]))
    args = take!(io)
    GC.@preserve key args dict_op(d) do h, out
        CAPI.cluster_dict_set_with_async(h, pointer(key), Csize_t(length(key)), CAPI.DICT_EACH, pointer(args),
                                         Csize_t(length(args)), out)
    end
    d
end

"`d[k] = ValueF(f)` on a DistributedDict: `f()` runs on the key's owner, then is stored."
function Base.setindex!(d::DistributedDict{K,V}, v::ValueF, k) where {K,V}
    key = store_key(d, k)
    set_bytes(d, key, remotecall_fetch(valuef_bytes, key_owner(d, key), v.f, V)::Vector{UInt8})
    d
end

"The process that owns the key with bytes `key` now (its writes are ordered there; it changes when a member dies)."
function key_owner(d::DistributedAssociative, key::Vector{UInt8})
    owner = Ref{Int32}(0)
    GC.@preserve key CAPI.check(CAPI.cluster_dict_owner(dict_handle(d), pointer(key), Csize_t(length(key)), owner))
    Int(owner[])
end

"`ClusterDicts.owner(d, k)`: the process that owns key `k` of `d` now (ClusterDicts' `where`)."
owner(d::DistributedAssociative, k) = key_owner(d, store_key(d, k))

"`pop!(d, k)`: removes `k` everywhere and returns its value; `KeyError` when it is not there."
function Base.pop!(d::DistributedAssociative, k)
    key = lookup_key(d, k)
    key === nothing && throw(KeyError(k))
    b = key_op(CAPI.cluster_dict_pop_async, d, key)
    b === nothing && throw(KeyError(k))
    decode_value(d, b)
end

"`pop!(d, k, default)`: as `pop!(d, k)`, `default` when `k` is not there."
function Base.pop!(d::DistributedAssociative, k, default)
    key = lookup_key(d, k)
    key === nothing && return default
    b = key_op(CAPI.cluster_dict_pop_async, d, key)
    b === nothing ? default : decode_value(d, b)
end

"`delete!(d, k)`: removes `k` everywhere (nothing when it is not there); returns `d`."
function Base.delete!(d::DistributedAssociative, k)
    key = lookup_key(d, k)
    key === nothing || key_op(CAPI.cluster_dict_delete_async, d, key)
    d
end

"""
    delete!(d::GlobalDict), delete!(d::DistributedDict)

Releases the dict on every member: once it returns no process holds
anything of it and its name is free. Handles to it (here or elsewhere) then
fail with an `ArgumentError`.
"""
function Base.delete!(d::DistributedAssociative)
    dict_op(CAPI.cluster_dict_release_async, d)
    nothing
end

# ------------------------------------------------------------- this process

"""
    localpart(d) -> Dict{K,V}

What this process stores of `d` (a copy; empty on a non-member): a
GlobalDict member's whole copy, a DistributedDict member's keys (those it
is the owner of and those it keeps a replica of).
"""
function localpart(d::DistributedAssociative{K,V}) where {K,V}
    e = Ref{Ptr{Cvoid}}(C_NULL)
    CAPI.check(CAPI.cluster_dict_localpart(dict_handle(d), e))
    out = Dict{K,V}()
    each_entry((k, v) -> (out[decode_key(d, k)] = decode_value(d, v)), e[])
    out
end

"""
    local_dicts() -> Vector{String}

The names of the dicts this process holds state for (as a member), sorted:
empty once they were all released.
"""
function local_dicts()
    e = Ref{Ptr{Cvoid}}(C_NULL)
    CAPI.check(CAPI.cluster_dict_local_names(context(), e))
    out = String[]
    each_entry((k, _) -> push!(out, String(k)), e[])
    out
end
