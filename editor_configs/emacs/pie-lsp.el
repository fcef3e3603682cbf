;;; pie-lsp.el --- pie-lsp for Emacs through lsp-mode's inline completion  -*- lexical-binding: t; -*-

;; Needs lsp-mode 9.0.1 or newer (it ships lsp-inline-completion.el).
;; Load it with (load "/path/to/editor_configs/emacs/pie-lsp.el") after lsp-mode, then
;; M-x lsp in a Python buffer. pie-lsp runs as an add-on next to the language's own server.

(require 'lsp-mode)
(require 'lsp-inline-completion)

(defgroup pie-lsp nil
  "Inline completion from a local model whose KV cache follows edits."
  :group 'lsp-mode)

(defcustom pie-lsp-command '("pie-lsp")
  "The pie-lsp server command, e.g. (\"pie-lsp\" \"--model\" \"/path/to/model\")."
  :type '(repeat string))

(defcustom pie-lsp-settings '(:debounceMs 0 :maxNewTokens 64 :strategy "pie")
  "The \"pieLsp\" settings sent to the server (see `pie-lsp --help')."
  :type 'plist)

(lsp-register-client
 (make-lsp-client
  :new-connection (lsp-stdio-connection (lambda () pie-lsp-command))
  :activation-fn (lsp-activate-on "python" "javascript" "typescript" "rust" "go" "c" "cpp")
  :add-on? t
  :server-id 'pie-lsp
  :initialization-options (lambda () (list :pieLsp pie-lsp-settings))))

;; lsp-mode asks for inline completions when Emacs has been idle this long after a change.
(setq lsp-inline-completion-enable t
      lsp-inline-completion-idle-delay 0.3)

;; While a suggestion is shown (lsp-inline-completion-active-map): RET accepts it,
;; C-n / C-p cycle, C-g dismisses. M-x lsp-inline-completion-display asks explicitly.

(defun pie-lsp-stats ()
  "Show pie-lsp's cache statistics for the current buffer."
  (interactive)
  (let ((result (lsp-request "workspace/executeCommand"
                             (list :command "pie-lsp.stats"
                                   :arguments (vector (lsp--buffer-uri))))))
    (with-current-buffer (get-buffer-create "*pie-lsp stats*")
      (erase-buffer)
      (insert (json-encode result))
      (json-pretty-print-buffer)
      (display-buffer (current-buffer)))))

(provide 'pie-lsp)
;;; pie-lsp.el ends here
