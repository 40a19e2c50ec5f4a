# GlobalDict and DistributedDict: a library handle to a dict (any number of
# handles, in any processes, name one dict), its key and value types in the
# Julia type.
#
# Keys and values travel as bytes, each in the reply encoding of wire.jl: the
# compact encoding for the common types (fastwire.jl: Int, Float64, String,
# Symbol, tuples of them...), `Serialization` otherwise. A key's bytes pick
# its partition, so they must be the same in every process for equal keys:
# both encodings write a value's type and contents only (no process-local
# numbering, no header), and a key is converted to the dict's key type
# first, as `Dict` does.
#
# Every operation that waits is a library future (`cluster_dict_*_async`,
# which the library retries by itself after a member died) waited on in the
# calling task as RemoteChannel operations are: a short drive of the reply's
# connection, then parked until the event loop reports it ready.

"Supertype of `GlobalDict` and `DistributedDict` (as ClusterDicts')."
abstract type DistributedAssociative{K,V} <: AbstractDict{K,V} end

for DT in (:GlobalDict, :DistributedDict)
    @eval begin
        mutable struct $DT{K,V} <: DistributedAssociative{K,V}
            name::String
            handle::Ptr{Cvoid}      # the library's handle; C_NULL once freed
            function $DT{K,V}(handle::Ptr{Cvoid}) where {K,V}
                d = new{K,V}("", handle)
                finalizer(free_handle!, d)
                d.name = CAPI.read_string(CAPI.cluster_dict_name, handle)
                d
            end
        end
    end
end

@doc """
    GlobalDict(pids = PidsWorkers(); name, ktype = Any, vtype = Any)
    GlobalDict(pids::Array; name, ktype = Any, vtype = Any)

A dict stored whole on every member (`pids`: `PidsWorkers()`, `PidsAll()`,
`Pids(ids)` or a list of ids): `d[k] = v` sets `k` on every member, and a
member reads its own copy without a message. `name` is unique in the
cluster (made up by the head when not given); creating a dict with the name
of an existing one and the same specification (members, key and value
types) opens it, a different specification is an error. `delete!(d)`
releases it everywhere.
""" GlobalDict

@doc """
    DistributedDict(pids = PidsWorkers(); name, ktype = Any, vtype = Any, replication = 0)
    DistributedDict(pids::Array; ...)

A dict whose keys are spread over the members by their hash, each key on
`replication` consecutive members (0: 2 when there are at least 2 members,
else 1) so that it survives the death of one of them. Otherwise as
[`GlobalDict`](@ref).
""" DistributedDict

dict_kind(::Type{<:GlobalDict}) = CAPI.CLUSTER_DICT_GLOBAL
dict_kind(::Type{<:DistributedDict}) = CAPI.CLUSTER_DICT_DISTRIBUTED

"Frees the library handle (idempotent, never blocks: safe from a finalizer). The dict stays."
free_handle!(d::DistributedAssociative) = CAPI.free_once!(CAPI.cluster_dict_free, d)

@inline function dict_handle(d::DistributedAssociative)
    h = d.handle
    h == C_NULL && throw(ArgumentError("$(nameof(typeof(d))) $(d.name): the handle was freed"))
    h
end

"The dict's members now (the survivors, after a member died), ascending."
dict_members(d::DistributedAssociative) = CAPI.read_ids(CAPI.cluster_dict_members, dict_handle(d))

# `d.pids`, as ClusterDicts' field: here the members themselves.
function Base.getproperty(d::DistributedAssociative, s::Symbol)
    s === :pids && return dict_members(d)
    getfield(d, s)
end
Base.propertynames(::DistributedAssociative, private::Bool = false) = (:name, :pids)

# No round trip to show a dict (the REPL's AbstractDict display lists the contents).
Base.show(io::IO, d::DistributedAssociative) =
    print(io, typeof(d), "(", repr(d.name), ", ", d.handle == C_NULL ? "freed" : dict_members(d), ")")
Base.show(io::IO, ::MIME"text/plain", d::DistributedAssociative) = show(io, d)

# ------------------------------------------------------------- creating

"What the spec's type tag holds: the key and value types (part of the specification)."
type_tag(K::Type, V::Type) = Vector{UInt8}(string("julia ", K, " => ", V))

"""
Creates the dict (or opens the one of that name with the same
specification), waiting in this task, and opens it here.
"""
function create_dict(::Type{DT}, pids::AbstractPids, name::Union{Nothing,AbstractString},
                     K::Type, V::Type, replication::Integer) where {DT<:DistributedAssociative}
    ctx = context()
    cname = name === nothing ? "" : String(name)
    Base.containsnul(cname) && throw(ArgumentError("a dict name cannot contain NUL: $(repr(cname))"))
    replication >= 0 || throw(ArgumentError("replication must be 0 (the default) or more, not $replication"))
    ids = member_ids(pids)
    tag = type_tag(K, V)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = GC.@preserve cname ids tag begin
        init = Ref{CAPI.DictSpec}()
        CAPI.check(CAPI.cluster_dict_spec_init(init))
        spec = CAPI.with_fields(init[];
            name = isempty(cname) ? Ptr{UInt8}(C_NULL) : pointer(cname),
            kind = dict_kind(DT), members = members_kind(pids),
            pids = isempty(ids) ? Ptr{Int32}(C_NULL) : pointer(ids), npids = length(ids),
            replication = UInt32(replication),
            type_tag = pointer(tag), type_tag_len = length(tag))
        CAPI.cluster_dict_create_async(ctx, Ref(spec), out)
    end
    st == CAPI.CLUSTER_OK || throw(create_exception(CAPI.last_error(st), cname))
    bytes = try
        await_future(out[])
    catch e
        e isa CAPI.ClusterError && throw(create_exception(e, cname))
        rethrow()
    end
    open_dict(DT{K,V}, bytes)
end

function create_exception(err::CAPI.ClusterError, name::String)
    if err.status == CAPI.CLUSTER_ERR_INVALID_ARGUMENT && occursin("another specification", err.msg)
        return ErrorException("A cluster dictionary with name $name but different specifications " *
                              "already exists ($(err.msg))")
    end
    err.status == CAPI.CLUSTER_ERR_INVALID_ARGUMENT && return ArgumentError(err.msg)
    library_exception(err, err.pid, true)
end

"Opens the dict a handle's bytes name, as a `T`."
function open_dict(::Type{T}, bytes::Vector{UInt8}) where {T<:DistributedAssociative}
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = GC.@preserve bytes CAPI.cluster_dict_open(context(), pointer(bytes), Csize_t(length(bytes)), out)
    st == CAPI.CLUSTER_OK || throw(ArgumentError(CAPI.last_error(st).msg))
    h = out[]
    kind = Ref{Int32}(0)
    st = CAPI.cluster_dict_info(h, kind, Ptr{UInt32}(C_NULL))
    if st != CAPI.CLUSTER_OK || kind[] != dict_kind(T)
        err = st == CAPI.CLUSTER_OK ? nothing : CAPI.last_error(st)
        CAPI.cluster_dict_free(h)
        err === nothing || throw(err)
        throw(ArgumentError("not a $(nameof(T)): the handle is a " *
                            (kind[] == CAPI.CLUSTER_DICT_GLOBAL ? "GlobalDict" : "DistributedDict")))
    end
    T(h)
end

"The handle as bytes, for another process's `open_dict`."
function handle_bytes(d::DistributedAssociative)
    buf = CAPI.Buffer()
    CAPI.check(CAPI.cluster_dict_to_bytes(dict_handle(d), buf))
    CAPI.take_buffer!(buf)
end

# ------------------------------------------------ passing a dict on
#
# A dict inside any value sent to another process travels as its handle's
# bytes (its configuration) with its type: the receiver opens it there, a
# member or not (ClusterDicts sent the name and looked it up).

function serialize(s::AbstractSerializer, d::DistributedAssociative)
    Serialization.serialize_type(s, typeof(d), false)
    serialize(s, handle_bytes(d))
end

function deserialize(s::AbstractSerializer, ::Type{T}) where {T<:DistributedAssociative}
    bytes = deserialize(s)::Vector{UInt8}
    open_dict(T, bytes)
end

# ------------------------------------------------ keys and values as bytes

"`x` in the reply encoding (fastwire.jl's when it has one, Serialization's otherwise), as fresh bytes."
function encode_bytes(@nospecialize(x))
    io = IOBuffer()
    if fast_value(x)
        write(io, TAG_OK_FAST)
        write_value(io, x)
    else
        write(io, TAG_OK)
        Base.invokelatest(serialize_value, io, x)
    end
    take!(io)
end

"The bytes of `k` for storing into `d`: converted to the key type, as `Dict`'s `setindex!`."
function store_key(d::DistributedAssociative{K}, k) where {K}
    k isa K && return encode_bytes(k)
    kk = convert(K, k)
    isequal(kk, k) || throw(ArgumentError("$(repr(k)) is not a valid key for type $K"))
    encode_bytes(kk)
end

"The bytes of `k` for a lookup in `d`, or `nothing` when no key of `d` can equal it."
function lookup_key(d::DistributedAssociative{K}, k) where {K}
    k isa K && return encode_bytes(k)
    kk = try
        convert(K, k)
    catch
        return nothing
    end
    isequal(kk, k) ? encode_bytes(kk) : nothing
end

store_value(d::DistributedAssociative{K,V}, v) where {K,V} = encode_bytes(convert(V, v))

decode_key(d::DistributedAssociative{K}, b::Vector{UInt8}) where {K} = decode_element(b)::K
decode_value(d::DistributedAssociative{K,V}, b::Vector{UInt8}) where {K,V} = decode_element(b)::V

# ------------------------------------------------------------- waiting

"The exception for a failed operation on `d`: as a Distributed call to its members would give."
function dict_exception(err::CAPI.ClusterError, d::DistributedAssociative)
    err.status == CAPI.CLUSTER_ERR_INVALID_ARGUMENT && return ArgumentError(err.msg)   # e.g. released
    library_exception(err, err.pid, true)
end

"""
    await_future(h) -> Union{Vector{UInt8}, Nothing}

Waits in this task for the library future `h` and returns its value;
`nothing` when it failed with CLUSTER_ERR_NOT_FOUND (a missing key);
throws the `ClusterError` of any other failure. Frees `h` (also when the
task is interrupted: the operation is withdrawn).
"""
function await_future(h::Ptr{Cvoid})
    try
        wait_channel_future(h, 0)
        data = Ref{Ptr{UInt8}}(C_NULL)
        len = Ref{Csize_t}(0)
        st = CAPI.cluster_future_fetch(h, 0, data, len)
        st == CAPI.CLUSTER_ERR_NOT_FOUND && return nothing
        st == CAPI.CLUSTER_OK || throw(CAPI.last_error(st))
        n = Int(len[])
        return n == 0 ? UInt8[] : copy(unsafe_wrap(Array, data[], n))
    finally
        CAPI.cluster_future_free(h)
    end
end

"""
    dict_op(start, d) -> Union{Vector{UInt8}, Nothing}

Starts an operation on `d` (`start(handle, out)` returns a status and a
future) and waits for it: its value, `nothing` for a missing key, or the
exception of its failure.
"""
@inline function dict_op(start::F, d::DistributedAssociative) where {F}
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = start(dict_handle(d), out)
    st == CAPI.CLUSTER_OK || throw(dict_exception(CAPI.last_error(st), d))
    try
        await_future(out[])
    catch e
        e isa CAPI.ClusterError && throw(dict_exception(e, d))
        rethrow()
    end
end

"An operation on one key: `start(handle, key, klen, out)`."
@inline key_op(start::F, d::DistributedAssociative, key::Vector{UInt8}) where {F} =
    GC.@preserve key dict_op((h, out) -> start(h, pointer(key), Csize_t(length(key)), out), d)

"Not a member of a GlobalDict: the key must be asked for."
struct NotHeld end
const NOT_HELD = NotHeld()

"""
A GlobalDict member's own copy of `key` (never waits): its bytes, `nothing`
when it is not there, `NOT_HELD` when this process is no member.
"""
function local_bytes(d::GlobalDict, key::Vector{UInt8})
    held = Ref(false)
    buf = CAPI.Buffer()
    st = GC.@preserve key CAPI.cluster_dict_get_local(dict_handle(d), pointer(key), Csize_t(length(key)), held, buf)
    held[] || (st == CAPI.CLUSTER_OK ? (return NOT_HELD) : throw(dict_exception(CAPI.last_error(st), d)))
    st == CAPI.CLUSTER_ERR_NOT_FOUND && return nothing
    st == CAPI.CLUSTER_OK || throw(dict_exception(CAPI.last_error(st), d))
    CAPI.take_buffer!(buf)
end

"The value bytes of `key` (`nothing`: not there): a GlobalDict member's own copy, else the key's primary."
function read_bytes(d::DistributedAssociative, key::Vector{UInt8})
    if d isa GlobalDict
        b = local_bytes(d, key)
        b isa NotHeld || return b
    end
    key_op(CAPI.cluster_dict_get_async, d, key)
end

# ------------------------------------------------------------- listings

"""
Reads a listing (`cluster_dict_entries`) and frees it: `f(key, value)` for
each entry, with the bytes copied (`nothing` for what the listing lacks).
"""
function each_entry(f::F, e::Ptr{Cvoid}) where {F}
    try
        n = Ref{Csize_t}(0)
        CAPI.check(CAPI.cluster_dict_entries_count(e, n))
        kp = Ref{Ptr{UInt8}}(C_NULL); kl = Ref{Csize_t}(0)
        vp = Ref{Ptr{UInt8}}(C_NULL); vl = Ref{Csize_t}(0)
        for i in 0:Int(n[])-1
            CAPI.check(CAPI.cluster_dict_entries_get(e, Csize_t(i), kp, kl, vp, vl))
            k = kp[] == C_NULL ? nothing : copy(unsafe_wrap(Array, kp[], Int(kl[])))
            v = vp[] == C_NULL ? nothing : copy(unsafe_wrap(Array, vp[], Int(vl[])))
            f(k, v)
        end
    finally
        CAPI.cluster_dict_entries_free(e)
    end
    nothing
end

"The whole dict's keys, values or pairs (`what`), gathered from its members, in no order."
function listing(f::F, d::DistributedAssociative, what::Int32) where {F}
    b = dict_op((h, out) -> CAPI.cluster_dict_list_async(h, what, out), d)::Vector{UInt8}
    e = Ref{Ptr{Cvoid}}(C_NULL)
    CAPI.check(GC.@preserve b CAPI.cluster_dict_entries_decode(pointer(b), Csize_t(length(b)), what, e))
    each_entry(f, e[])
end
