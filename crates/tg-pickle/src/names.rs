//! Python 2 → 3 name fix-ups that `find_class` applies to protocol 0–2 pickles
//! (`Lib/_compat_pickle.py`, `fix_imports=True` is the default of `pickle.load` and
//! `torch.load`). A scanner that skips them reads `__builtin__.eval` as an unknown module while
//! the loader imports `builtins.eval`.

/// The `(module, name)` that `find_class` really looks up for `(module, name)` in a pickle of
/// protocol `proto`.
pub fn resolve(module: &str, name: &str, proto: u8) -> (String, String) {
    if proto >= 3 {
        return (module.to_owned(), name.to_owned());
    }
    if let Some((m, n)) = NAME_MAPPING
        .iter()
        .find(|(m, n, _, _)| *m == module && *n == name)
        .map(|e| (e.2, e.3))
    {
        return (m.to_owned(), n.to_owned());
    }
    if module == "exceptions" {
        return ("builtins".to_owned(), name.to_owned());
    }
    if let Some((_, m)) = IMPORT_MAPPING.iter().find(|(old, _)| *old == module) {
        return ((*m).to_owned(), name.to_owned());
    }
    (module.to_owned(), name.to_owned())
}

const IMPORT_MAPPING: &[(&str, &str)] = &[
    ("__builtin__", "builtins"),
    ("copy_reg", "copyreg"),
    ("Queue", "queue"),
    ("SocketServer", "socketserver"),
    ("ConfigParser", "configparser"),
    ("repr", "reprlib"),
    ("tkFileDialog", "tkinter.filedialog"),
    ("tkSimpleDialog", "tkinter.simpledialog"),
    ("tkColorChooser", "tkinter.colorchooser"),
    ("tkCommonDialog", "tkinter.commondialog"),
    ("Dialog", "tkinter.dialog"),
    ("Tkdnd", "tkinter.dnd"),
    ("tkFont", "tkinter.font"),
    ("tkMessageBox", "tkinter.messagebox"),
    ("ScrolledText", "tkinter.scrolledtext"),
    ("Tkconstants", "tkinter.constants"),
    ("Tix", "tkinter.tix"),
    ("ttk", "tkinter.ttk"),
    ("Tkinter", "tkinter"),
    ("markupbase", "_markupbase"),
    ("_winreg", "winreg"),
    ("thread", "_thread"),
    ("dummy_thread", "_dummy_thread"),
    ("dbhash", "dbm.bsd"),
    ("dumbdbm", "dbm.dumb"),
    ("dbm", "dbm.ndbm"),
    ("gdbm", "dbm.gnu"),
    ("xmlrpclib", "xmlrpc.client"),
    ("SimpleXMLRPCServer", "xmlrpc.server"),
    ("httplib", "http.client"),
    ("htmlentitydefs", "html.entities"),
    ("HTMLParser", "html.parser"),
    ("Cookie", "http.cookies"),
    ("cookielib", "http.cookiejar"),
    ("BaseHTTPServer", "http.server"),
    ("test.test_support", "test.support"),
    ("commands", "subprocess"),
    ("urlparse", "urllib.parse"),
    ("robotparser", "urllib.robotparser"),
    ("urllib2", "urllib.request"),
    ("anydbm", "dbm"),
    ("_abcoll", "collections.abc"),
    ("cPickle", "pickle"),
    ("_elementtree", "xml.etree.ElementTree"),
    ("FileDialog", "tkinter.filedialog"),
    ("SimpleDialog", "tkinter.simpledialog"),
    ("DocXMLRPCServer", "xmlrpc.server"),
    ("SimpleHTTPServer", "http.server"),
    ("CGIHTTPServer", "http.server"),
    ("UserDict", "collections"),
    ("UserList", "collections"),
    ("UserString", "collections"),
    ("whichdb", "dbm"),
    ("StringIO", "io"),
    ("cStringIO", "io"),
];

const NAME_MAPPING: &[(&str, &str, &str, &str)] = &[
    ("__builtin__", "xrange", "builtins", "range"),
    ("__builtin__", "reduce", "functools", "reduce"),
    ("__builtin__", "intern", "sys", "intern"),
    ("__builtin__", "unichr", "builtins", "chr"),
    ("__builtin__", "unicode", "builtins", "str"),
    ("__builtin__", "long", "builtins", "int"),
    ("itertools", "izip", "builtins", "zip"),
    ("itertools", "imap", "builtins", "map"),
    ("itertools", "ifilter", "builtins", "filter"),
    ("itertools", "ifilterfalse", "itertools", "filterfalse"),
    ("itertools", "izip_longest", "itertools", "zip_longest"),
    ("UserDict", "IterableUserDict", "collections", "UserDict"),
    ("UserList", "UserList", "collections", "UserList"),
    ("UserString", "UserString", "collections", "UserString"),
    ("whichdb", "whichdb", "dbm", "whichdb"),
    ("_socket", "fromfd", "socket", "fromfd"),
    (
        "_multiprocessing",
        "Connection",
        "multiprocessing.connection",
        "Connection",
    ),
    (
        "multiprocessing.process",
        "Process",
        "multiprocessing.context",
        "Process",
    ),
    (
        "multiprocessing.forking",
        "Popen",
        "multiprocessing.popen_fork",
        "Popen",
    ),
    (
        "urllib",
        "ContentTooShortError",
        "urllib.error",
        "ContentTooShortError",
    ),
    ("urllib", "getproxies", "urllib.request", "getproxies"),
    ("urllib", "pathname2url", "urllib.request", "pathname2url"),
    ("urllib", "quote_plus", "urllib.parse", "quote_plus"),
    ("urllib", "quote", "urllib.parse", "quote"),
    ("urllib", "unquote_plus", "urllib.parse", "unquote_plus"),
    ("urllib", "unquote", "urllib.parse", "unquote"),
    ("urllib", "url2pathname", "urllib.request", "url2pathname"),
    ("urllib", "urlcleanup", "urllib.request", "urlcleanup"),
    ("urllib", "urlencode", "urllib.parse", "urlencode"),
    ("urllib", "urlopen", "urllib.request", "urlopen"),
    ("urllib", "urlretrieve", "urllib.request", "urlretrieve"),
    ("urllib2", "HTTPError", "urllib.error", "HTTPError"),
    ("urllib2", "URLError", "urllib.error", "URLError"),
];

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn builtin_maps_only_below_protocol_3() {
        assert_eq!(
            resolve("__builtin__", "eval", 2),
            ("builtins".into(), "eval".into())
        );
        assert_eq!(
            resolve("__builtin__", "eval", 3),
            ("__builtin__".into(), "eval".into())
        );
        assert_eq!(
            resolve("__builtin__", "reduce", 0),
            ("functools".into(), "reduce".into())
        );
        assert_eq!(
            resolve("commands", "getoutput", 0),
            ("subprocess".into(), "getoutput".into())
        );
    }
}
