# What LibCluster puts in libcluster's byte payloads. Everything Julia
# travels through `Serialization`:
#
#   call   = MSG_SERIALIZED * serialize(Any[globals, f, args, kwargs])
#          | MSG_FAST * fast call (fastwire.jl: named function, plain values)
#   reply  = TAG_OK  * serialize(value)
#          | TAG_OK_FAST * fast value
#          | TAG_ERR * serialize(type name, text, backtrace, exception)
#                                                       (-> RemoteException)
#
# `globals` carries the `Main` globals an anonymous function refers to, as
# Distributed does: `a = 1; remotecall_fetch(() -> a + 1, 2)` works, and a
# global is sent again only when it changed since it was last sent to that
# process.

const TAG_OK = 0x00
const TAG_ERR = 0x01
const TAG_OK_FAST = 0x02

const MSG_SERIALIZED = 0x00
const MSG_FAST = 0x01

# ------------------------------------------------------------------ calls

# The message is a Vector{Any}: one compiled serializer method for every call,
# whatever the types of the function and arguments.
function encode_call(pid::Integer, @nospecialize(f), @nospecialize(args::Tuple), @nospecialize(kwargs))
    io = IOBuffer()
    if fast_call(f, args, kwargs)
        write(io, MSG_FAST)
        write_fast_call(io, f, args)
        return io
    end
    write(io, MSG_SERIALIZED)
    # Behind a dynamic call: code that uses only the fast encoding then never
    # compiles Serialization's machinery.
    Base.invokelatest(serialize_call, io, pid, f, args, kwargs)
    io
end

# Object numbers (of anonymous types and methods) are per sending process:
# the receiver keeps what it deserialized from each sender, so that sending
# the same closure again reuses the type and its compiled code instead of
# making (and compiling) a new one each time.
const KNOWN_OBJECTS = Dict{Int,Dict{UInt64,Any}}()

# Guards KNOWN_OBJECTS and GLOBALS_SENT for callers on several threads.
const SERIAL_LOCK = ReentrantLock()

function serializer_from(pid::Integer, io::IO)
    s = Serializer(io)
    if hasfield(typeof(s), :known_object_data)
        s.known_object_data = get!(() -> Dict{UInt64,Any}(), KNOWN_OBJECTS, Int(pid))
    end
    s
end

function serialize_call(io::IO, pid::Integer, @nospecialize(f), @nospecialize(args::Tuple), @nospecialize(kwargs))
    kw = isempty(kwargs) ? nothing : collect(Pair{Symbol,Any}, kwargs)
    globs = lock(() -> globals_to_send(pid, f, args), SERIAL_LOCK)
    msg = Any[globs, f, Any[args...], kw]
    serialize(Serializer(io), msg)
end

"Deserializes a call from process `caller`: defines the globals it carries, returns `(f, args, kwargs)`."
function decode_call(bytes::AbstractVector{UInt8}, caller::Integer = 0)
    io = IOBuffer(bytes)
    if read(io, UInt8) == MSG_FAST
        f, args = read_fast_call(io)
        return f, args, ()
    end
    Base.invokelatest(deserialize_call, io, Int(caller))
end

function deserialize_call(io::IO, caller::Int)
    msg = lock(() -> deserialize(serializer_from(caller, io)), SERIAL_LOCK)::Vector{Any}
    globs = msg[1]
    globs === nothing || define_globals(globs)
    kw = msg[4]
    msg[2], (msg[3]::Vector{Any}), kw === nothing ? () : kw
end

# ---------------------------------------------------------------- replies

function encode_ok(@nospecialize(v))
    io = IOBuffer()
    if fast_value(v)
        write(io, TAG_OK_FAST)
        write_value(io, v)
    else
        write(io, TAG_OK)
        Base.invokelatest(serialize_value, io, v)
    end
    io
end

serialize_value(io::IO, @nospecialize(v)) = serialize(Serializer(io), v)

"""
The error reply for exception `e` with backtrace `bt`; never throws. As
Distributed's `ClusterSerializer` does for a `CapturedException`, the
exception's type name (and here its text) come first, then the backtrace,
then the exception: a receiver that cannot deserialize the exception (its
type is not defined there) still has the rest.
"""
function encode_err(e, bt)
    for attempt in 1:3
        io = IOBuffer()
        write(io, TAG_ERR)
        try
            ex = attempt == 1 ? e : ErrorException(safe_showerror(e))
            frames = attempt == 3 ? Any[] : portable_backtrace(bt)
            s = Serializer(io)
            serialize(s, string(typeof(e)))
            serialize(s, safe_showerror(e))
            serialize(s, frames)
            serialize(s, ex)
            return io
        catch
        end
    end
    io = IOBuffer()
    write(io, TAG_ERR)
    s = Serializer(io)
    foreach(x -> serialize(s, x), ("ErrorException", "remote error (unprintable)", Any[], ErrorException("remote error (unprintable)")))
    io
end

safe_showerror(e) = try
    sprint(showerror, e)
catch
    string(typeof(e))
end

"""
    decode_reply(bytes, pid) -> (ok::Bool, value_or_exception)

Reads a reply written by `encode_ok`/`encode_err` from process `pid`.
"""
function decode_reply(bytes::AbstractVector{UInt8}, pid::Integer)
    isempty(bytes) && return (true, nothing)
    io = IOBuffer(bytes)
    tag = read(io, UInt8)
    tag == TAG_OK_FAST && return (true, read_value(io))
    Base.invokelatest(decode_serialized_reply, io, tag, Int(pid))::Tuple{Bool,Any}
end

function decode_serialized_reply(io::IO, tag::UInt8, pid::Int)
    tag == TAG_ERR && return (false, lock(() -> decode_err(serializer_from(pid, io), pid), SERIAL_LOCK))
    v = try
        lock(() -> deserialize(serializer_from(pid, io)), SERIAL_LOCK)
    catch err
        # e.g. the result's type is not defined here
        return (false, RemoteException(pid, CapturedException(
            ErrorException("the result from process $pid cannot be deserialized here: " * safe_showerror(err)),
            Any[])))
    end
    (true, v)
end

"""
The `RemoteException` of an error reply from `pid`. What cannot be
deserialized here is recovered as Distributed does: a `CompositeException`
of the remote error as text (with its type name) and of the local failure,
e.g. the `UndefVarError` of a type this process does not have.
"""
function decode_err(s::AbstractSerializer, pid::Int)
    typ = deserialize(s)::String
    text = deserialize(s)::String
    bt = try
        deserialize(s)::Vector{Any}
    catch err
        return RemoteException(pid, CapturedException(CompositeException(Any[
            CapturedException(undeserializable(pid, typ, text, false), Any[]),
            capture(err, catch_backtrace())]), Any[]))
    end
    ex = try
        deserialize(s)
    catch err
        return RemoteException(pid, CapturedException(CompositeException(Any[
            CapturedException(undeserializable(pid, typ, text, true), bt),
            capture(err, catch_backtrace())]), Any[]))
    end
    RemoteException(pid, CapturedException(ex, bt))
end

# Distributed's text (clusterserialize.jl, `original_ex`), with the remote
# error's own text added.
undeserializable(pid, typ, text, remote_bt) =
    ErrorException("Error deserializing a remote exception from worker $pid\n" *
                   "Remote(original) exception of type $typ\n" *
                   "Remote(original) exception text: $text\n" *
                   (remote_bt ? "Remote" : "Local") * " stacktrace : ")

# ----------------------------------------------------------- Main globals

const GLOBALS_SENT = Dict{Tuple{Int,Symbol},Tuple{UInt64,UInt64}}()

function forget_process(pid::Int)
    lock(SERIAL_LOCK) do
        filter!(kv -> first(kv)[1] != pid, GLOBALS_SENT)
        delete!(KNOWN_OBJECTS, pid)
    end
end

is_main_anon(@nospecialize(T)) =
    T isa DataType && T <: Function && T.name.module === Main && startswith(String(T.name.name), "#")

"""
    globals_to_send(pid, f, args) -> Union{Nothing,Vector}

The `Main` globals referred to by `f` (and by function arguments) when they
are anonymous functions defined in `Main`, as Distributed sends them: every
value, types, modules and named functions included, and what an anonymous
function held in such a global refers to in turn. `(name, isconst, value)`
for each that process `pid` has not received with this value yet (bits
values, named functions among them, are sent every time, as Distributed).
"""
function globals_to_send(pid::Integer, @nospecialize(f), @nospecialize(args::Tuple))
    syms = Symbol[]
    seen = Set{Any}()
    collect_main_globals!(syms, seen, typeof(f))
    for a in args
        a isa Function && collect_main_globals!(syms, seen, typeof(a))
    end
    isempty(syms) && return nothing
    out = Tuple{Symbol,Bool,Any}[]
    i = 0
    while i < length(syms)          # grows while we go
        i += 1
        sym = syms[i]
        isdefined(Main, sym) || continue
        v = getfield(Main, sym)
        v isa Function && collect_main_globals!(syms, seen, typeof(v))
        if pid > 0 && !isbits(v)
            stamp = (UInt64(objectid(v)), UInt64(hash(v)))
            get(GLOBALS_SENT, (Int(pid), sym), nothing) == stamp && continue
            GLOBALS_SENT[(Int(pid), sym)] = stamp
        end
        push!(out, (sym, isconst(Main, sym), v isa Module ? ModuleRef(v) : v))
    end
    isempty(out) ? nothing : out
end

"""
A module held in a global, by name: the receiver looks it up among its
loaded modules, and names the package to load when it is not there (where
`Serialization` would fail with a `KeyError`).
"""
struct ModuleRef
    path::Vector{Symbol}
    uuid::String
end

function ModuleRef(m::Module)
    uuid = Base.PkgId(Base.moduleroot(m)).uuid
    ModuleRef(collect(Symbol, fullname(m)), uuid === nothing ? "" : string(uuid))
end

function resolve(r::ModuleRef)
    m = root_module_named(r.path[1], r.uuid)
    for p in r.path[2:end]
        m = getfield(m, p)::Module
    end
    m
end

function collect_main_globals!(syms::Vector{Symbol}, seen::Set{Any}, @nospecialize(T))
    is_main_anon(T) || return
    T in seen && return
    push!(seen, T)
    ms = try
        Base.MethodList(T.name.mt)
    catch
        return
    end
    for m in ms
        ci = try
            Base.uncompressed_ast(m)
        catch
            continue
        end
        scan_code!(syms, seen, ci.code)
    end
end

function scan_code!(syms, seen, x)
    if x isa GlobalRef
        x.mod === Main || return
        s = x.name
        isdefined(Main, s) || return
        if startswith(String(s), "#")
            v = getfield(Main, s)
            v isa DataType && collect_main_globals!(syms, seen, v)
            v isa Function && collect_main_globals!(syms, seen, typeof(v))
        elseif Base.binding_module(Main, s) === Main && !(s in syms)
            push!(syms, s)
        end
    elseif x isa Expr
        for a in x.args
            scan_code!(syms, seen, a)
        end
    elseif x isa AbstractVector
        for a in x
            scan_code!(syms, seen, a)
        end
    end
    nothing
end

function define_globals(globs)
    for (sym, isc, v) in globs
        v isa ModuleRef && (v = resolve(v))
        if isdefined(Main, sym) && (isc || isconst(Main, sym))
            isequal(getfield(Main, sym), v) || @warn "Cannot transfer global variable $sym; it already has a value."
            continue
        end
        if isc
            Core.eval(Main, Expr(:const, Expr(:(=), sym, QuoteNode(v))))
        else
            Core.eval(Main, Expr(:global, Expr(:(=), sym, QuoteNode(v))))
        end
    end
end
